"""tools/device/check_determinism.py: can a session's GPU retrain the teacher bit for bit?"""

from __future__ import annotations

import pytest
import torch
from conftest import load_script

check = load_script("tools/device/check_determinism.py", "check_determinism")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_same_seed_gives_the_same_weights_and_another_seed_others() -> None:
    """On the CPU training is reproducible, so the check must say "equal" there; a changed
    seed shows the hash does look at the trained weights."""
    kwargs = {"model_name": "resnet8x4", "steps": 2, "batch": 4}
    a = check.train("cpu", deterministic=True, **kwargs)
    b = check.train("cpu", deterministic=True, **kwargs)
    other = check.train("cpu", deterministic=True, seed=1, **kwargs)
    assert a.sha256 == b.sha256 != other.sha256
    assert a.warned == () and a.ms_per_step > 0
    assert not torch.are_deterministic_algorithms_enabled()  # left as it found it


def test_a_difference_and_the_warned_operations_are_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    trials = iter([
        check.Trial("a" * 64, 20.0, ("adaptive_avg_pool2d_backward_cuda does not have one",)),
        check.Trial("b" * 64, 21.0, ("adaptive_avg_pool2d_backward_cuda does not have one",)),
        check.Trial("c" * 64, 18.0, ()),
    ])
    monkeypatch.setattr(check, "train", lambda device, **kwargs: next(trials))
    assert check.main(["--device", "cpu"]) == 0  # reports, never stops the study
    out = capsys.readouterr().out
    assert "deterministic twice: DIFFERENT (sha256 aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb)" in out
    assert "21.0 ms a step deterministic (the second trial), 18.0 default" in out
    assert "no deterministic kernel for: adaptive_avg_pool2d_backward_cuda" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only machine")
def test_without_cuda_it_says_there_is_nothing_to_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert check.main([]) == 0
    assert "no CUDA device here" in capsys.readouterr().out


def test_the_trained_weights_are_the_documented_recipes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-written loop of the recipe the docstring names (seeded batches, channels_last,
    lr 0.2, momentum 0.9, weight decay 5e-4, cross-entropy, 3 steps) ends at the weights the
    check hashes; the
    time is per timed step (the first is untimed): 0.5 s over 2 steps is 250 ms."""
    import torch.nn.functional as F

    from figkd.engine.teacher_cache import state_dict_sha256
    from figkd.models import create_model

    clock = iter([10.0, 10.5])
    monkeypatch.setattr(check.time, "perf_counter", lambda: next(clock))
    trial = check.train("cpu", deterministic=True, model_name="resnet8x4", steps=3, batch=4,
                        seed=7)
    generator = torch.Generator().manual_seed(7)
    images = torch.randn(4, 3, 32, 32, generator=generator)
    targets = torch.randint(0, 100, (4,), generator=generator)
    images = images.contiguous(memory_format=torch.channels_last)  # the runs' layout
    torch.manual_seed(7)
    model = create_model("resnet8x4", num_classes=100).to(memory_format=torch.channels_last)
    sgd = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        sgd.zero_grad()
        F.cross_entropy(model(images), targets).backward()
        sgd.step()
    assert trial.sha256 == state_dict_sha256(model)
    assert trial.ms_per_step == pytest.approx(250.0)
