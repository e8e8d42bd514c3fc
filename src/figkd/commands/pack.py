"""``figkd pack``: write a dataset's decoded uint8 pixels as ``.npz`` shards (``uint8-shards``).

    figkd pack tiny-imagenet --size 32 --out .device/tiny32 --max-mib 45
    figkd pack cifar100 --data-root ~/data/cifar-100-python --out packs/cifar --codec raw

The pixels come from the uint8 cache (``build_uint8_cache``), i.e. the one-off decode the
fast path itself does: ``--size S`` resizes each image to S x S with ``TF.resize`` (bilinear,
antialiased, as ``T.Resize((S, S))`` in the ``tiny-imagenet-32`` preset), so a study on the
shards trains on exactly the pixels a study on the JPEG tree trains on.  Train and test keep
the source order (val is carved from train afterwards, identically).  Read them back with
``dataset: uint8-shards`` and ``root: <out>`` (``figkd study --dataset uint8-shards``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from figkd.cli import Command


def run(args: argparse.Namespace) -> int:
    from figkd.data import DATASETS, build_uint8_cache
    from figkd.data.shards import write_shards

    start = time.perf_counter()
    name = DATASETS.canonical(args.dataset)
    root = args.data_root
    if name == "tiny-imagenet":
        from figkd.analysis.study import locate_tiny_imagenet

        root = locate_tiny_imagenet(root, Path(args.cache_dir))  # also unpacks a .tar
    else:
        from figkd.data.api import resolve_root

        root = resolve_root(name, root)  # record the folder read, not the option (often unset)
    out = Path(args.out)
    summary = {"dataset": name, "root": None if root is None else str(root), "size": args.size,
               "codec": args.codec, "max_mib": args.max_mib, "splits": {}}
    try:
        from figkd.data import load_dataset

        dataset_names = getattr(load_dataset(name, root, "test"), "class_names", None)
    except Exception:  # noqa: BLE001 - the human-readable names are optional
        dataset_names = None
    for split in args.splits:
        cache = build_uint8_cache(name, root, split, args.size, num_workers=args.workers)
        images = cache.images.permute(0, 2, 3, 1).contiguous().numpy()
        paths = write_shards(out, split, images, cache.targets.numpy(), list(cache.classes),
                             max_mib=args.max_mib, codec=args.codec, block=args.block,
                             class_names=dataset_names)
        sizes = [p.stat().st_size for p in paths]
        summary["splits"][split] = {
            "images": len(images), "shape": list(images.shape[1:]),
            "files": {p.name: s for p, s in zip(paths, sizes)},
        }
        print(f"{split}: {len(images)} images {tuple(images.shape[1:])} -> {len(paths)} shard(s), "
              f"{sum(sizes) / 2**20:.1f} MiB ({sum(sizes) / images.nbytes:.2f} of raw), "
              f"largest {max(sizes) / 2**20:.1f} MiB", flush=True)
    (out / "pack.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out}/ in {time.perf_counter() - start:.0f} s; read it with "
          f"dataset uint8-shards, root {out}")
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    from figkd.commands.train import HelpFormatter

    parser.formatter_class = HelpFormatter  # keeps the examples above on their own lines
    parser.add_argument("dataset", help="a registered dataset, e.g. tiny-imagenet")
    parser.add_argument("--out", required=True, help="folder for the shards (required)")
    parser.add_argument("--size", type=int, help="resize every image to SIZE x SIZE (bilinear)")
    parser.add_argument("--data-root", help="the dataset folder (tiny-imagenet: also its .tar)")
    parser.add_argument("--cache-dir", default=".cache", help="where a .tar is unpacked once")
    parser.add_argument("--splits", nargs="+", default=["train", "test"], choices=["train", "test"],
                        help="which splits to pack")
    parser.add_argument("--max-mib", type=float, default=45.0, help="largest shard file, MiB")
    parser.add_argument("--codec", choices=("med-xz", "raw"), default="med-xz",
                        help="med-xz: lossless predictive + xz (~0.55x); raw: deflated npz")
    parser.add_argument("--block", type=int, default=2048, help="images per encoded block")
    parser.add_argument("--workers", type=int, default=0, help="decode workers (first pack)")


COMMAND = Command(
    name="pack",
    help="write a dataset's uint8 pixels at a fixed size as .npz shards (dataset uint8-shards)",
    configure=configure,
    run=run,
    description=__doc__,
)
