"""tools/device/check_strong_view.py: the per-session GPU check of MLKD's batched strong view."""

from __future__ import annotations

import pytest
import torch
from conftest import load_script

check = load_script("tools/device/check_strong_view.py", "check_strong_view")


def test_cpu_against_cpu_compares_every_value() -> None:
    assert check.compare("cpu", batch=8) == (0, 8 * 3 * 32 * 32)


def test_a_mismatch_is_reported_with_its_count(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(check, "compare", lambda device, batch: (5, 300))
    assert check.main(["--device", "cpu", "--batch", "4"]) == 0  # reports, never stops the study
    assert "DIFFERENT in 5 of 300 values" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only machine")
def test_without_cuda_it_says_there_is_nothing_to_compare(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert check.main([]) == 0
    assert "no CUDA device here" in capsys.readouterr().out
