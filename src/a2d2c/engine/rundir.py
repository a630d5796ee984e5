"""Run folders: a fresh name per run, no silent replacement, one writer at a time.

* ``train.output_dir: null`` (the default) → ``runs/<data>-<model>-<YYYYmmdd-HHMMSS>``,
  made unique (``-2``, ``-3``, ...) so that a run never lands in another run's folder.
* A folder named explicitly that already holds a run (``last.pt`` or ``metrics.jsonl``)
  is refused for a fresh run: continue it with ``--resume``, replace it with
  ``--train.overwrite true``, or pick another folder.
* While a run writes a folder it holds ``<folder>/.lock`` (an advisory ``flock``, released
  by the kernel when the process ends, so a crash leaves no stale lock); a second run
  into the same folder stops at once instead of interleaving its metrics.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from .config import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock, the other checks remain
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunDirError", "RunLock", "check_fresh_run_dir", "default_output_dir",
           "holds_run"]

#: files whose presence means a folder holds a run
RUN_FILES = ("last.pt", "metrics.jsonl")


class RunDirError(ConfigError):
    """The run folder cannot be used (another run's, or being written by one)."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+]+", "_", text).strip("_") or "run"


def default_output_dir(data: str, model: str, root: str | os.PathLike = "runs",
                       now: float | None = None) -> Path:
    """``<root>/<data>-<model>-<YYYYmmdd-HHMMSS>``, suffixed ``-2``, ``-3``... if taken."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = Path(root) / f"{_slug(data)}-{_slug(model)}-{stamp}"
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True)  # atomic: two runs started in one second differ
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")


def holds_run(folder: str | os.PathLike) -> bool:
    return any((Path(folder) / f).exists() for f in RUN_FILES)


def check_fresh_run_dir(folder: str | os.PathLike, overwrite: bool) -> None:
    """Refuse to start a fresh run over an earlier one unless ``overwrite``."""
    folder = Path(folder)
    if holds_run(folder) and not overwrite:
        raise RunDirError(
            f"{folder} already holds a run; continue it with --resume {folder / 'last.pt'}, "
            "replace it with --train.overwrite true, or choose another --train.output_dir")


class RunLock:
    """Exclusive advisory lock on ``<folder>/.lock`` for the life of a run."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunDirError(
                    f"another run ({owner}) is writing {self.path.parent}; wait for it, or "
                    "choose another --train.output_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None
