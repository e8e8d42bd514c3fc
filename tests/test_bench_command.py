"""``figkd bench`` and :mod:`figkd.analysis.overhead`: the ratio arithmetic, the timing loop
on a fake clock, size parsing, which FiGKD computation a size takes, and the command end to end
on a tiny size (1 round, 1 ms blocks)."""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import load_script

from figkd.analysis import overhead
from figkd.cli import main
from figkd.losses import FiGKDLoss, KDLoss, figkd_loss
from figkd.wavelets import logit_grid_shape

pytestmark = pytest.mark.usefixtures("one_thread")

KD = overhead.KD_NAME
CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- ratio arithmetic


def test_summary_is_median_time_and_median_of_ratios_paired_by_round() -> None:
    # X / KD per round: 20/10, 60/20, 30/30 = 2, 3, 1 -> median 2; median(X) / median(KD) = 1.5
    summary = overhead.summarize({KD: [10.0, 20.0, 30.0], "X": [20.0, 60.0, 30.0]})
    assert summary == {KD: (20.0, 1.0), "X": (30.0, 2.0)}
    # paired: 30/10, 40/40, 60/20 = 3, 1, 3 -> 3; the ratio of medians would give 40/20 = 2 and
    # pairing the sorted lists (30/10, 40/20, 60/40) would give 2 as well
    summary = overhead.summarize({"Y": [30.0, 40.0, 60.0], KD: [10.0, 40.0, 20.0]})
    assert summary == {"Y": (40.0, 3.0), KD: (20.0, 1.0)}


def test_summary_refuses_unpaired_or_missing_reference() -> None:
    with pytest.raises(ValueError, match="paired by round"):
        overhead.summarize({KD: [1.0, 2.0], "X": [1.0]})
    with pytest.raises(ValueError, match=re.escape(repr(KD))):
        overhead.summarize({"X": [1.0]})
    with pytest.raises(ValueError, match="must be positive"):
        overhead.summarize({KD: [1.0, 0.0], "X": [1.0, 1.0]})


# --------------------------------------------------------------------------- timing loop


class FakeClock:
    """Time advances only when a fake step says so."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def test_time_block_calls_fn_iterations_times_and_divides_the_elapsed_time() -> None:
    clock = FakeClock()
    calls = []

    def step() -> None:
        calls.append(clock.now)
        clock.now += 0.25 * (len(calls) % 2 + 1)  # 0.5, 0.25, 0.5, ... -> 7 calls: 2.75 s

    assert overhead.time_block(step, 7, CPU, clock=clock) == 2.75 / 7
    assert len(calls) == 7 and clock.reads == 2


def test_the_method_is_the_documented_one() -> None:
    """3 warm-up calls, a 3-call estimate, ~20 ms blocks of at most 200 calls (the numbers the
    committed reports were measured with)."""
    assert (overhead.WARMUP_CALLS, overhead.CALIBRATION_CALLS) == (3, 3)
    assert (overhead.TARGET_BLOCK_SECONDS, overhead.MAX_BLOCK_ITERATIONS) == (0.02, 200)
    with pytest.raises(ValueError, match="rounds must be >= 1, got 0"):
        overhead.benchmark(CPU, [(8, 10)], rounds=0)


def test_calibrate_warms_up_then_sizes_blocks_to_the_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(overhead, "TARGET_BLOCK_SECONDS", 0.5)
    for per_call, want in [(0.125, 4), (0.3, 1), (2.0, 1), (0.0, overhead.MAX_BLOCK_ITERATIONS)]:
        clock, calls = FakeClock(), [0]

        def step(
            clock: FakeClock = clock, calls: list[int] = calls, per_call: float = per_call
        ) -> None:
            calls[0] += 1
            clock.now += per_call

        assert overhead.calibrate(step, CPU, clock=clock) == want, per_call
        assert calls[0] == overhead.WARMUP_CALLS + overhead.CALIBRATION_CALLS


def test_rounds_time_every_step_once_each_in_a_shuffled_order() -> None:
    clock = FakeClock()
    log: list[str] = []
    seconds = {"a": 1.0, "b": 2.0, "c": 4.0}
    iterations = {"a": 1, "b": 2, "c": 3}

    def make(name: str) -> Any:
        def step() -> None:
            log.append(name)
            clock.now += seconds[name]
        return step

    steps = {name: make(name) for name in seconds}
    times = overhead.measure_rounds(steps, iterations, 4, CPU, random.Random(5), clock=clock)
    assert times == {name: [value] * 4 for name, value in seconds.items()}
    shuffler = random.Random(5)
    orders = []
    for _ in range(4):
        order = list(seconds)
        shuffler.shuffle(order)
        orders.append(order)
    assert any(order != list(seconds) for order in orders)  # the seed does shuffle
    assert log == [name for order in orders for name in order for _ in range(iterations[name])]
    with pytest.raises(ValueError, match="rounds must be >= 1, got 0"):
        overhead.measure_rounds(steps, iterations, 0, CPU, random.Random(0), clock=clock)


# --------------------------------------------------------------------------- sizes and paths


def test_parse_size_reads_batch_by_classes_and_names_bad_text() -> None:
    assert overhead.parse_size("64x100") == (64, 100)
    assert overhead.parse_size("1x2") == (1, 2)  # the smallest batch and class count
    for text in ["64", "x100", "0x10", "64x1", "64x", "axb"]:
        with pytest.raises(ValueError, match=re.escape(repr(text)) + ".*BATCHxCLASSES"):
            overhead.parse_size(text)


def test_path_of_follows_the_class_count_limit_and_the_variant() -> None:
    limit = figkd_loss.BAND_MATRIX_MAX_CLASSES["cpu"]
    assert limit < figkd_loss.BAND_MATRIX_MAX_CLASSES["cuda"]
    haar_2d = FiGKDLoss(wavelet="haar", transform="2d", validate=False)
    assert overhead.path_of(haar_2d, limit, CPU) == "band matrix"
    assert overhead.path_of(haar_2d, limit + 1, CPU) == "fused Haar"
    assert overhead.path_of(haar_2d, limit + 1, torch.device("cuda")) == "band matrix"
    db2_2d = FiGKDLoss(wavelet="db2", transform="2d", validate=False)
    haar_1d = FiGKDLoss(wavelet="haar", transform="1d", validate=False)
    assert overhead.path_of(db2_2d, limit + 1, CPU) == "band path"
    assert overhead.path_of(haar_1d, limit + 1, CPU) == "band path"
    assert overhead.path_of(FiGKDLoss(noise_std=0.1, validate=False), 10, CPU) == "band path"
    assert overhead.path_of(KDLoss(validate=False), limit + 1, CPU) == "-"


def test_path_of_names_the_computation_the_loss_really_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each default configuration, just under and over the CPU limit: the path the loss's own
    dispatch takes (spied on) is the one the report names."""
    taken: list[str] = []

    def spy(name: str, original: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            taken.append(name)
            return original(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(figkd_loss, "linear_band_loss",
                        spy("band matrix", figkd_loss.linear_band_loss))
    monkeypatch.setattr(FiGKDLoss, "_fused_haar", spy("fused Haar", FiGKDLoss._fused_haar))
    monkeypatch.setattr(FiGKDLoss, "_band_path", spy("band path", FiGKDLoss._band_path))
    limit = figkd_loss.BAND_MATRIX_MAX_CLASSES["cpu"]
    for num_classes in (limit, limit + 1):
        student, teacher = torch.randn(2, num_classes), torch.randn(2, num_classes)
        targets = torch.tensor([0, 1])
        for name, loss in overhead.default_configurations().items():
            taken.clear()
            with warnings.catch_warnings():  # db2 at levels 2-3 on small maps warns
                warnings.simplefilter("ignore", UserWarning)
                loss(student, teacher, targets)
            expected = overhead.path_of(loss, num_classes, CPU)
            assert taken == ([] if expected == "-" else [expected]), (name, num_classes)


def test_default_configurations_are_kd_ce_and_twelve_unvalidated_figkd_variants() -> None:
    configs = overhead.default_configurations()
    figkd_names = [f"FiGKD {t} {w} L{level}" for t in ("2d", "1d") for w in ("haar", "db2")
                   for level in (1, 2, 3)]
    assert list(configs) == [KD, "CE only", *figkd_names]
    for name in figkd_names:
        loss = configs[name]
        assert isinstance(loss, FiGKDLoss)
        _, transform, wavelet, level = name.split()
        assert (loss.transform, loss.wavelet, loss.level) == (transform, wavelet, int(level[1:]))
    assert all(loss.validate is False for loss in configs.values())


# --------------------------------------------------------------------------- the command


def _table_rows(report: str) -> dict[str, list[str]]:
    rows = {}
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "loss":
            rows[cells[0]] = cells[1:]
    return rows


def test_bench_prints_and_writes_one_row_per_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(overhead, "TARGET_BLOCK_SECONDS", 0.001)  # 1 ms blocks: a quick test
    output = tmp_path / "new" / "folders" / "bench.md"
    argv = ["bench", "--sizes", "8x10", "--rounds", "1", "--device", "cpu", "--output", str(output)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert output.read_text() == captured.out  # print's newline, write_report's newline
    assert f"- command: `figkd {' '.join(argv)}`\n" in captured.out
    height, width = logit_grid_shape(10)
    assert f"\n#### batch 8 x 10 classes (grid {height}x{width})\n" in captured.out
    assert captured.out.count("### device: CPU: ") == 1
    rows = _table_rows(captured.out)
    configs = overhead.default_configurations()
    assert list(rows) == list(configs)
    assert rows[KD][2] == "1.00"
    for name, (path, micros, ratio) in rows.items():
        assert path == overhead.path_of(configs[name], 10, CPU)
        assert float(micros) > 0 and float(ratio) > 0
    assert f"figkd bench: wrote {output}" in captured.err


def test_quick_means_one_size_and_three_rounds(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[Any, ...]] = []

    def fake_report(command: str, devices: Any, sizes: Any, rounds: int, say: Any) -> str:
        seen.append((command, list(devices), list(sizes), rounds))
        return "REPORT"

    monkeypatch.setattr(overhead, "build_report", fake_report)
    assert main(["bench", "--quick", "--device", "cpu"]) == 0
    assert main(["bench", "--quick", "--rounds", "5", "--device", "cpu"]) == 0
    assert main(["bench", "--device", "cpu"]) == 0
    assert seen == [
        ("figkd bench --sizes 64x100 --rounds 3 --device cpu", [CPU], [(64, 100)], 3),
        ("figkd bench --sizes 64x100 --rounds 5 --device cpu", [CPU], [(64, 100)], 5),
        ("figkd bench --sizes 64x100 128x200 256x1000 --rounds 15 --device cpu", [CPU],
         [(64, 100), (128, 200), (256, 1000)], 15),
    ]
    assert capsys.readouterr().out == "REPORT\n" * 3


def test_bench_refuses_zero_rounds_and_bad_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in [
        (["--rounds", "0"], "argument --rounds: must be >= 1"),
        (["--sizes", "64"], "argument --sizes: invalid size '64': expected BATCHxCLASSES"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(["bench", *argv])
        assert info.value.code == 2
        assert f"figkd bench: error: {message}" in capsys.readouterr().err


def test_bench_cuda_without_cuda_names_the_problem_and_the_fix(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--device", "cuda", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("figkd bench: error: --device cuda, but torch ")
    assert "sees no CUDA GPU" in err and "use --device cpu or auto" in err
    assert [d.type for d in overhead.resolve_devices("auto")] == ["cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [d.type for d in overhead.resolve_devices("auto")] == ["cpu", "cuda"]
    assert [d.type for d in overhead.resolve_devices("cuda")] == ["cuda"]


def test_script_keeps_its_command_line_and_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``benchmarks/loss_overhead.py`` on the shared code: its own command in the header, the
    default sizes, and ``--output``."""
    script = load_script("benchmarks/loss_overhead.py", "loss_overhead")
    seen: list[tuple[Any, ...]] = []

    def fake_benchmark(device: torch.device, sizes: Any, rounds: int, **_: Any) -> list[str]:
        seen.append((device, list(sizes), rounds))
        return ["TABLES"]

    monkeypatch.setattr(overhead, "benchmark", fake_benchmark)
    output = tmp_path / "out.md"
    assert script.main(["--rounds", "2", "--device", "cpu", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert seen == [(CPU, list(overhead.DEFAULT_SIZES), 2)]
    command = f"python benchmarks/loss_overhead.py --rounds 2 --device cpu --output {output}"
    assert f"- command: `{command}`\n" in printed
    assert printed.endswith("\nTABLES\n") and output.read_text() == printed
