"""Progress output and the single-process side of the DDP helpers.

Expected lines are written out by hand from the documented formats; the DDP helpers are
checked where a single process can see them (the two-process path is ``test_ddp.py``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from figkd.engine import distributed as dist_utils
from figkd.engine.distributed import DistContext
from figkd.engine.progress import EpochProgress, choose_mode, epoch_line


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal, as stderr does in an interactive shell."""

    def isatty(self) -> bool:
        return True


# ----------------------------------------------------------------------------- progress


def test_auto_mode_draws_a_bar_only_on_a_terminal() -> None:
    assert choose_mode("auto", FakeTerminal()) == "bar"
    assert choose_mode("auto", io.StringIO()) == "lines"
    assert choose_mode("auto", object()) == "lines"  # type: ignore[arg-type]  # no isatty at all
    for explicit in ("bar", "lines", "none"):
        assert choose_mode(explicit, FakeTerminal()) == explicit
        assert choose_mode(explicit, io.StringIO()) == explicit


def test_auto_mode_looks_at_stderr_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", FakeTerminal())
    assert choose_mode("auto") == "bar"
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert choose_mode("auto") == "lines"


def test_lines_mode_prints_every_nth_step_with_loss_and_rate() -> None:
    """every=3 over 7 steps: lines after steps 3 and 6, loss to 4 decimals, then the rate."""
    stream = io.StringIO()
    progress = EpochProgress("lines", total=7, epoch=3, epochs=9, every=3, prefix="kd ",
                             stream=stream)
    shown = []
    for loss in (2.0, 4.0, 1.23456, 9.0, 8.0, None, 7.0):
        shown.append(progress.needs_loss())
        progress.update(loss)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"kd epoch 3/9 step 3/7 loss 1\.2346 \(\d+\.\d it/s\)", lines[0])
    assert re.fullmatch(r"kd epoch 3/9 step 6/7 \(\d+\.\d it/s\)", lines[1])  # no loss given
    # the loss is needed (a device sync) only before the steps that print
    assert shown == [False, False, True, False, False, True, False]


def test_lines_rate_is_steps_over_elapsed_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """4 steps in 2.0 s of the (patched) clock: 2.0 it/s."""
    clock = iter([10.0, 12.0])
    monkeypatch.setattr("figkd.engine.progress.time.perf_counter", lambda: next(clock))
    stream = io.StringIO()
    progress = EpochProgress("lines", total=4, epoch=1, epochs=1, every=4, stream=stream)
    for _ in range(4):
        progress.update(0.5)
    assert stream.getvalue() == "epoch 1/1 step 4/4 loss 0.5000 (2.0 it/s)\n"


def test_none_mode_is_silent_and_never_needs_the_loss() -> None:
    stream = io.StringIO()
    progress = EpochProgress("none", total=3, epoch=1, epochs=1, every=1, stream=stream)
    for _ in range(3):
        assert not progress.needs_loss()
        progress.update(1.0)
    progress.close()
    assert stream.getvalue() == ""


def test_bar_mode_draws_a_tqdm_bar_with_the_loss() -> None:
    stream = FakeTerminal()
    progress = EpochProgress("auto", total=3, epoch=2, epochs=5, every=100, prefix="s0 ",
                             stream=stream)
    assert progress.mode == "bar"
    assert progress.bar is not None
    assert progress.needs_loss()  # every step shows the loss on a bar
    for loss in (3.0, 2.5, 1.125):
        progress.update(loss)
    progress.bar.refresh()
    drawn = stream.getvalue()
    progress.close()
    assert "s0 epoch 2/5" in drawn
    assert "3/3" in drawn
    assert "loss=1.1250" in drawn


def test_epoch_line_format() -> None:
    record = {"lr": 0.05, "train": {"loss": 1.234567}, "val": {"top1": 41.256},
              "test": {"top1": 40.0}, "time_s": 12.34}
    assert epoch_line("kd ", 7, 60, record) == (
        "kd epoch 7/60  lr 0.05  loss 1.2346  val top1 41.26  test top1 40.00  12.3s"
    )
    no_val = {"lr": 1.5e-05, "train": {"loss": 0.5}, "test": {"top1": 3.0}, "time_s": 0.04}
    assert epoch_line("", 1, 2, no_val) == "epoch 1/2  lr 1.5e-05  loss 0.5000  test top1 3.00  0.0s"


# ----------------------------------------------------------------------------- distributed


def test_context_from_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    single = dist_utils.env_context()
    assert (single.rank, single.world_size, single.local_rank) == (0, 1, 0)
    assert single.is_main and not single.enabled

    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    job = dist_utils.env_context()
    assert (job.rank, job.world_size, job.local_rank) == (3, 4, 1)
    assert not job.is_main and job.enabled
    assert DistContext(rank=0, world_size=2).is_main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU messages")
def test_device_choice_without_a_gpu() -> None:
    ctx = DistContext()
    assert dist_utils.resolve_device("auto", ctx) == torch.device("cpu")
    assert dist_utils.resolve_device("cpu", ctx) == torch.device("cpu")
    for asked in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="no GPU is visible; use train.device=cpu"):
            dist_utils.resolve_device(asked, ctx)


def test_single_process_helpers_change_nothing() -> None:
    """Without a job, reductions and broadcasts return their input untouched."""
    ctx = DistContext()
    tensor = torch.tensor([1.0, 2.0])
    assert dist_utils.all_reduce_sum(tensor, ctx) is tensor
    assert tensor.tolist() == [1.0, 2.0]
    message = {"error": "stop"}
    assert dist_utils.broadcast_object(message, ctx) is message
    model = nn.BatchNorm1d(2)
    dist_utils.broadcast_buffers(model, ctx)
    dist_utils.barrier(ctx)
    assert dist_utils.wrap_ddp(model, ctx, torch.device("cpu"), sync_bn=True) is model
    dist_utils.init_process_group(ctx, torch.device("cpu"))
    assert not torch.distributed.is_initialized()
    dist_utils.destroy_process_group()  # nothing to destroy: no error


def test_sync_batchnorm_on_cpu_is_refused_with_the_fix() -> None:
    job = DistContext(rank=0, world_size=2)
    with pytest.raises(ValueError, match="train.sync_bn needs CUDA"):
        dist_utils.wrap_ddp(nn.BatchNorm1d(2), job, torch.device("cpu"), sync_bn=True)


def test_context_defaults_to_one_process_and_is_frozen() -> None:
    ctx = DistContext()
    assert (ctx.rank, ctx.world_size, ctx.local_rank) == (0, 1, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.rank = 1  # type: ignore[misc]


def _two_rank_job(rank: int, port: int, out: str) -> None:  # runs in a spawned process
    import json
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = DistContext(rank=rank, world_size=2, local_rank=rank)
    cpu = torch.device("cpu")
    dist_utils.init_process_group(ctx, cpu)
    dist_utils.init_process_group(ctx, cpu)  # a second call joins nothing new
    backend = torch.distributed.get_backend()
    summed = dist_utils.all_reduce_sum(torch.tensor([rank + 1.0]), ctx).tolist()
    told = dist_utils.broadcast_object(f"from rank {rank}", ctx)
    norm = nn.BatchNorm1d(2)
    assert norm.running_mean is not None  # track_running_stats defaults to True
    norm.running_mean.fill_(10.0 * (rank + 1))
    dist_utils.broadcast_buffers(norm, ctx)
    wrapped = dist_utils.wrap_ddp(nn.Linear(2, 1), ctx, cpu, sync_bn=False)
    dist_utils.barrier(ctx)
    dist_utils.destroy_process_group()
    result = {
        "backend": backend,
        "summed": summed,
        "told": told,
        "running_mean": norm.running_mean.tolist(),
        "wrapped": type(wrapped).__name__,
        "device_ids": wrapped.device_ids,
        "left": torch.distributed.is_initialized(),
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)


def test_two_rank_gloo_job_reduces_and_broadcasts_from_rank_zero(tmp_path: Path) -> None:
    """A real 2-process gloo group: sums add up, broadcasts carry rank 0's values."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(_two_rank_job, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result == {
            "backend": "gloo",
            "summed": [3.0],  # 1 + 2
            "told": "from rank 0",
            "running_mean": [10.0, 10.0],  # rank 0 filled 10, rank 1 filled 20
            "wrapped": "DistributedDataParallel",
            "device_ids": None,  # CPU modules take no device ids
            "left": False,
        }
