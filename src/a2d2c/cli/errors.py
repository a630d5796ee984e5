"""The command line's one error path.

Every command runs under :func:`run_command`: an error the user can fix (config, data,
checkpoint, filesystem, device, dependency, bad argument) prints one line
``a2d2c <command>: error: <what was wrong and how to fix it>`` on stderr and exits 2;
a failure at run time (a non-finite loss, out of memory, any other unexpected error)
prints one line and exits 1. ``--debug`` (anywhere on the command line) or
``A2D2C_DEBUG=1`` lets the exception propagate with its traceback instead.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

__all__ = ["DEBUG_ENV", "exit_code", "format_error", "pop_debug_flag", "run_command"]

DEBUG_ENV = "A2D2C_DEBUG"


def pop_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug``, and whether tracebacks were asked for."""
    debug = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
        debug = True
    return argv, debug


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Anticipated errors: the user's input or environment is at fault (exit 2)."""
    types: list[type[BaseException]] = [ValueError, TypeError, ImportError, OSError,
                                         LookupError]
    try:  # the package's own error types (all are ValueError/RuntimeError/OSError kinds)
        from ..engine.checkpoint import CheckpointError

        types.append(CheckpointError)
    except ImportError:  # pragma: no cover - a broken install still gets one line
        pass
    return tuple(types)


def _runtime_error_types() -> tuple[type[BaseException], ...]:
    """Failures of a run that started correctly (exit 1), checked before the above."""
    types: list[type[BaseException]] = [MemoryError]
    try:
        from ..engine.trainer import NonFiniteLossError

        types.append(NonFiniteLossError)
    except ImportError:  # pragma: no cover
        pass
    import torch

    types.append(torch.OutOfMemoryError)
    return tuple(types)


# What PyTorch raises (as RuntimeError/AssertionError) for a device this machine lacks
# or a device string it does not know: the user's setting, so exit 2 like a config error.
_DEVICE_ERRORS = ("Found no NVIDIA driver", "Torch not compiled with CUDA",
                  "CUDA is not available", "no CUDA GPUs are available",
                  "Expected one of cpu, cuda", "Invalid device string", "invalid device ordinal")


def is_device_error(e: BaseException) -> bool:
    """True for PyTorch's errors about a missing or unknown device."""
    return isinstance(e, (RuntimeError, AssertionError)) and any(
        m.lower() in str(e).lower() for m in _DEVICE_ERRORS)


def exit_code(e: BaseException) -> int:
    """2 for an anticipated error the user can fix, 1 for a run-time failure."""
    if is_device_error(e):
        return 2
    if isinstance(e, _runtime_error_types()):
        return 1
    if isinstance(e, KeyError):  # a missing key is a bug, unless it says otherwise
        return 1
    if isinstance(e, _user_error_types()):
        return 2
    return 1


def format_error(e: BaseException) -> str:
    """One line: the exception's own message (a readable one for filesystem errors)."""
    if isinstance(e, OSError) and e.errno is not None and e.strerror:
        where = f": {e.filename}" if e.filename else ""
        fix = {errno.ENOSPC: "free some disk space or write elsewhere",
               errno.EACCES: "choose a writable location",
               errno.EROFS: "choose a writable location",
               errno.EISDIR: "give a file path, not a folder",
               errno.ENOTDIR: "a part of the path is a file, not a folder",
               errno.EEXIST: "remove it or choose another path"}.get(e.errno)
        msg = f"{e.strerror}{where}" + (f" ({fix})" if fix else "")
    else:
        msg = str(e).strip()
        if isinstance(e, KeyError) and len(e.args) == 1:
            msg = f"missing key {e.args[0]!r}"
    lines = [line.strip() for line in msg.splitlines() if line.strip()]
    if any(line.startswith(("Traceback", "Original Traceback")) for line in lines):
        lines = [lines[0], lines[-1]]  # a DataLoader worker's error: what and where, no trace
    msg = " ".join(lines) if lines else type(e).__name__
    if is_device_error(e):
        msg = (f"device not available: {msg} (choose another device, e.g. cpu; check with "
               "python -c 'import torch; print(torch.cuda.is_available())')")
    elif exit_code(e) == 1 and not isinstance(e, _runtime_error_types()):
        msg = (f"unexpected {type(e).__name__}: {msg} (rerun with --debug or {DEBUG_ENV}=1 "
               "for the traceback)")
    return msg


def run_command(name: str, fn: Callable[[], int], debug: bool) -> int:
    """Run one command, turning any exception into one line on stderr and an exit code."""
    if debug:
        return fn()
    try:
        return fn()
    except KeyboardInterrupt:
        print(f"a2d2c {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        print(f"a2d2c {name}: error: {format_error(e)}", file=sys.stderr)
        return exit_code(e)
