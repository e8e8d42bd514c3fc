"""An exclusive lock beside a shared cache file, so parallel runs extend it in turn.

Runs of a study started side by side (``figkd study --parallel N``) share one teacher-logit
cache file.  Without a lock each would load the same old file, compute its own missing views
(the same teacher forwards several times over) and save, and the last writer would drop the
others' additions.  Under the lock the second run loads what the first saved and computes
only what is still missing.

The lock is ``fcntl.flock`` on a hidden ``.<name>.lock`` file next to the cache; it is
released when the holder exits or dies.  The lock file is left in place (deleting it would
let two runs lock different files).  Where ``fcntl`` does not exist (Windows) there is no
lock: runs stay correct, they may only repeat work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def lock_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def exclusive(
    path: str | os.PathLike[str], say: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the lock of ``path`` (the file itself need not exist) for the ``with`` body."""
    if fcntl is None:
        yield
        return
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if say is not None:
                say(f"waiting for {Path(path).name}: another run is extending it")
            start = time.perf_counter()
            fcntl.flock(handle, fcntl.LOCK_EX)
            if say is not None:
                say(f"  got it after {time.perf_counter() - start:.1f} s")
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
