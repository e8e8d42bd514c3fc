"""Does the batched strong view (MLKD) give the CPU's pixels on this machine's GPU?

`tests/test_batch_randaugment.py` and `tests/test_strong_view_loader.py` check it under
pytest, which the device machine does not have; `short_tier.sh` runs this before the study
(a few seconds) so each session's log says it for the GPU the runs train on.  It only
reports: a mismatch does not stop the study.

    python tools/device/check_strong_view.py [--device cuda] [--batch 256]
"""

from __future__ import annotations

import argparse
import sys

import torch


def compare(device: str, batch: int = 256, seed: int = 0) -> tuple[int, int]:
    """(pixels that differ, pixels compared) between the CPU's and ``device``'s strong views."""
    from figkd.data.batch_loader import StrongBatchAugment

    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, 32, 32), generator=generator, dtype=torch.uint8)
    augment = StrongBatchAugment("tiny-imagenet-32")
    params = augment.sample(batch, generator)
    on_cpu = augment.apply(images, params)
    on_device = augment.apply(images.to(device), params).cpu()
    return int((on_cpu != on_device).sum()), on_cpu.numel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("check_strong_view: no CUDA device here; nothing to compare")
        return 0
    differ, total = compare(args.device, args.batch)
    verdict = "equal" if differ == 0 else f"DIFFERENT in {differ} of {total} values"
    print(f"check_strong_view: the strong view on {args.device} is {verdict} to the CPU's "
          f"({args.batch} images, tiny-imagenet-32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
