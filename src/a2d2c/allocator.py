"""Keep glibc's allocator from returning large blocks to the OS after every step.

By default glibc serves allocations above a (dynamic) threshold with ``mmap`` and gives
them back with ``munmap`` when freed, and trims the heap top as soon as 128 KiB are
free. A training step frees and re-allocates the same activation-sized blocks every
iteration, so every step page-faults its whole working set in again (measured on a
CIFAR ResNet-18 A²D²C layer: ~550k minor page faults per step, 2 GiB zeroed by the
kernel; none with the setting below). :func:`tune_allocator` raises both thresholds to
their maximum with ``mallopt``, which glibc honours at any time for later
allocations; the ``a2d2c`` command calls it at start-up.

Library users get the same with :func:`tune_allocator` at the top of their script, or,
before the process starts, in the shell::

    export MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647

Set ``A2D2C_MALLOC_TUNING=0`` to keep the ``a2d2c`` command from tuning it. On
non-glibc platforms (macOS, Windows, musl) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["ENV_VARS", "allocator_state", "release_free_memory", "tune_allocator"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MAX = 2**31 - 1  # mallopt takes an int

#: The equivalent environment variables (read by glibc when the process starts).
ENV_VARS = {"MALLOC_MMAP_THRESHOLD_": str(_MAX), "MALLOC_TRIM_THRESHOLD_": str(_MAX)}

_state = {"tuned": False}


def _glibc_function(name: str, argtypes: list, restype: type):
    """``name`` from glibc with its C signature set, or ``None`` (not Linux, no glibc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = argtypes, restype
    return fn


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds; returns whether it was applied.

    Idempotent. Returns ``False`` (and changes nothing) on non-glibc platforms or when
    ``A2D2C_MALLOC_TUNING=0``.
    """
    if _state["tuned"]:
        return True
    if os.environ.get("A2D2C_MALLOC_TUNING", "1") == "0":
        return False
    mallopt = _glibc_function("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)
    if mallopt is None:
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, _MAX) == 1
    _state["tuned"] = ok
    return ok


def release_free_memory() -> bool:
    """Give the heap's free pages back to the OS now (glibc's ``malloc_trim(0)``); returns
    whether it ran (``False`` on non-glibc platforms).

    With the thresholds raised glibc keeps every block a process frees (a freed 400 MB
    tensor stays resident, measured). ``a2d2c bench --preset grid`` calls this before
    every point, whose warm-up steps then fault their working set in outside the timed
    steps. (The 24 GB a grid run once reached was a leak in the bench's count of saved
    activations, not this; releasing alone did not stop it.)
    """
    trim = _glibc_function("malloc_trim", [ctypes.c_size_t], ctypes.c_int)
    if trim is None:
        return False
    trim(0)
    return True


def allocator_state() -> str:
    """``"tuned"`` (by :func:`tune_allocator`), ``"env"`` (the shell set the variables)
    or ``"default"``; recorded by ``a2d2c bench``."""
    if _state["tuned"]:
        return "tuned"
    if all(os.environ.get(k) for k in ENV_VARS):
        return "env"
    return "default"
