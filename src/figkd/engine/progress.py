"""Progress output: a tqdm bar on a terminal, plain periodic lines in CI and logs."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def choose_mode(mode: str, stream: TextIO | None = None) -> str:
    """``auto`` -> ``bar`` when ``stream`` (stderr) is a terminal, else ``lines``."""
    if mode != "auto":
        return mode
    stream = stream or sys.stderr
    return "bar" if getattr(stream, "isatty", lambda: False)() else "lines"


class EpochProgress:
    """Reports steps of one epoch; ``update`` takes the current loss for display."""

    def __init__(
        self,
        mode: str,
        total: int,
        epoch: int,
        epochs: int,
        every: int,
        prefix: str = "",
        stream: TextIO | None = None,
    ) -> None:
        self.mode = choose_mode(mode, stream)
        self.stream = stream or sys.stderr
        self.total, self.epoch, self.epochs, self.every = total, epoch, epochs, every
        self.prefix = prefix
        self.step = 0
        self.start = time.perf_counter()
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                desc=f"{prefix}epoch {epoch}/{epochs}",
                leave=False,
                file=self.stream,
                dynamic_ncols=True,
            )

    def update(self, loss: float | None = None) -> None:
        self.step += 1
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elif self.mode == "lines" and (self.step % self.every == 0):
            shown = f" loss {loss:.4f}" if loss is not None else ""
            rate = self.step / max(time.perf_counter() - self.start, 1e-9)
            print(
                f"{self.prefix}epoch {self.epoch}/{self.epochs} step {self.step}/{self.total}"
                f"{shown} ({rate:.1f} it/s)",
                file=self.stream,
                flush=True,
            )

    def needs_loss(self) -> bool:
        """Whether the next ``update`` shows the loss (reading it syncs the device)."""
        if self.bar is not None:
            return True
        return self.mode == "lines" and (self.step + 1) % self.every == 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def epoch_line(prefix: str, epoch: int, epochs: int, record: dict[str, Any]) -> str:
    """One summary line per epoch: LR, train loss, val/test top-1."""
    parts = [
        f"{prefix}epoch {epoch}/{epochs}",
        f"lr {record['lr']:.4g}",
        f"loss {record['train']['loss']:.4f}",
    ]
    for split in ("val", "test"):
        if split in record:
            parts.append(f"{split} top1 {record[split]['top1']:.2f}")
    parts.append(f"{record['time_s']:.1f}s")
    return "  ".join(parts)
