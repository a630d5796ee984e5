"""Measured path choice for ``impl="auto"``, once per shape (like ``cudnn.benchmark``).

By default ``impl="auto"`` follows the cost model of :mod:`a2d2c.ops.cost`: free and
deterministic; on the two committed CPU grids its choice has a geometric-mean regret of
1.01 but misses by up to 1.38x / 1.84x (batch-1 layers on 4x4 maps). Where that is not
good enough, turn on benchmarking::

    import a2d2c.ops.tuning as tuning
    tuning.set_benchmark(True)          # process-wide, like torch.backends.cudnn.benchmark
    with tuning.benchmark():            # or for a block
        ...

Then the first call of every distinct *signature* (shapes, dtypes, memory format,
device, threads, autocast, which inputs want a gradient) times every exact path on the
call's own tensors — forward, plus backward where a gradient is wanted — and every later
call with that signature runs the fastest. The extra cost is paid once per signature
(a few steps' worth in the first training step; again for a new batch size, e.g. the last
smaller batch, and for evaluation). All paths are exact, so the choice changes only
floating-point rounding, not the computation; but it depends on timings, so two runs (or
two DDP ranks) may pick differently — leave it off where bitwise reproducibility matters
(under DDP the averaged gradients still keep the ranks' weights identical).

On CPU the plus form also measures, once per signature, how it computes its ``K``
responses: one dense convolution or im2col + GEMM
(:func:`a2d2c.ops.mixed_conv.plus_method`; which is faster depends on the CPU).

Nothing is timed while tracing (``torch.compile``, export, ONNX) or under ``torch.func``
transforms: there the cost model decides, as without benchmarking.

Why not ``torch.backends.cudnn.benchmark``: it picks cuDNN's algorithm for one
convolution; the choice here is between different computations (kernel mix + grouped
convolution, im2col + GEMM, K dense convolutions), which no library times for us.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "PLUS_RESPONSES",
    "Measured",
    "benchmark",
    "cache_info",
    "clear_cache",
    "is_benchmark_enabled",
    "load_cache",
    "replay",
    "set_benchmark",
    "signature",
    "split_choices",
    "summary",
    "tuned_choice",
]

logger = logging.getLogger(__name__)


class Measured(NamedTuple):
    """One signature's measurement: the path chosen and every candidate's seconds."""

    choice: str
    seconds: dict[str, float]  # best of the timed runs; inf for a path that failed


_lock = threading.Lock()
_cache: dict[Hashable, Measured] = {}
_state = {"enabled": False, "repeats": 3}
_timer: Callable[[], float] = time.perf_counter  # tests may replace it


def set_benchmark(enabled: bool, *, repeats: int | None = None) -> None:
    """Turn measured choice on or off for the whole process.

    ``repeats``: timed runs per path after one untimed warm-up (the best is kept;
    default 3).
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"set_benchmark: enabled must be True or False, got {enabled!r}")
    if repeats is not None:
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"set_benchmark: repeats must be an int >= 1, got {repeats!r}")
        _state["repeats"] = repeats
    _state["enabled"] = enabled


def is_benchmark_enabled() -> bool:
    """Whether ``impl="auto"`` measures (True) or follows the cost model (False)."""
    return bool(_state["enabled"])


@contextlib.contextmanager
def benchmark(enabled: bool = True, *, repeats: int | None = None) -> Iterator[None]:
    """:func:`set_benchmark` for a block; the previous setting is restored after it."""
    old = dict(_state)
    set_benchmark(enabled, repeats=repeats)
    try:
        yield
    finally:
        _state.update(old)


def cache_info() -> dict[Hashable, Measured]:
    """A copy of the measurements so far, by signature."""
    with _lock:
        return dict(_cache)


def summary() -> str:
    """One line on the measurements so far, e.g. ``"12 shapes measured: kernel 7, plus
    5; plus responses: conv 3, gemm 2"`` (empty when nothing was measured)."""
    choices, methods = split_choices(cache_info())
    if not choices and not methods:
        return ""

    def counts(names: list[str]) -> str:
        return ", ".join(f"{name} {names.count(name)}" for name in sorted(set(names)))

    line = f"{len(choices)} shapes measured: {counts(choices)}"
    return f"{line}; plus responses: {counts(methods)}" if methods else line


#: The signature kind of the plus form's own measurement (how it computes its responses,
#: :func:`a2d2c.ops.mixed_conv.plus_method`), kept apart from the path choices.
PLUS_RESPONSES = "plus_responses"


def split_choices(entries: Mapping[Hashable, Measured]) -> tuple[list[str], list[str]]:
    """The chosen paths and, apart, the chosen plus-form methods of ``entries``
    (:func:`cache_info`)."""
    paths = [m.choice for key, m in entries.items() if key[0] != PLUS_RESPONSES]
    methods = [m.choice for key, m in entries.items() if key[0] == PLUS_RESPONSES]
    return paths, methods


def load_cache(entries: Mapping[Hashable, Measured]) -> None:
    """Add measurements, e.g. :func:`cache_info` of an earlier run (picklable), so that
    its signatures are not measured again; an entry already here is kept."""
    with _lock:
        for key, m in entries.items():
            _cache.setdefault(key, Measured(*m))


def clear_cache() -> None:
    """Forget every measurement (the next call of each signature measures again)."""
    with _lock:
        _cache.clear()


def _tensor_sig(t: Tensor | None) -> tuple | None:
    if t is None:
        return None
    fmt = "cl" if (t.dim() == 4 and not t.is_contiguous()
                   and t.is_contiguous(memory_format=torch.channels_last)) else "c"
    return (tuple(t.shape), t.dtype, fmt, bool(t.requires_grad))


def signature(kind: str, tensors: Sequence[Tensor | None], *extra: Hashable) -> tuple:
    """The cache key of a call: what its speed depends on.

    ``kind`` names the caller (``"mixed_conv2d"``, a layer type); ``tensors`` contribute
    shape, dtype, memory format and whether they want a gradient; ``extra`` anything else
    (geometry, options). The device, CPU threads, grad mode and autocast are added here.
    """
    first = next(t for t in tensors if t is not None)
    device = first.device
    autocast = (torch.get_autocast_dtype(device.type)
                if torch.is_autocast_enabled(device.type) else None)
    return (kind, str(device), torch.get_num_threads(), torch.is_grad_enabled(), autocast,
            tuple(_tensor_sig(t) for t in tensors), *extra)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_path(run: Callable[[str], object], impl: str, device: torch.device,
               repeats: int) -> float:
    run(impl)  # warm-up: allocations, cuDNN/Triton autotuning, compilation
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        start = _timer()
        run(impl)
        _sync(device)
        best = min(best, _timer() - start)
    return best


def tuned_choice(key: Hashable, candidates: Sequence[str], run: Callable[[str], object],
                 device: torch.device, *, fallible: Sequence[str] = ()) -> str:
    """The fastest of ``candidates`` for ``key``, measured with ``run(impl)`` on first use.

    ``run(impl)`` must compute the call with path ``impl`` and leave no trace (no
    gradient accumulated, no random numbers drawn, no state changed). A path that runs
    out of memory — or, for paths in ``fallible`` (e.g. ``"triton"``, which needs a
    working compiler), raises anything — is skipped with a log line; any other error
    propagates.
    """
    with _lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit.choice
    seconds: dict[str, float] = {}
    for impl in candidates:
        try:
            seconds[impl] = _time_path(run, impl, device, int(_state["repeats"]))
        except torch.OutOfMemoryError:
            seconds[impl] = math.inf
            logger.info("impl benchmark: %s ran out of memory on %s; skipped", impl, key)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as e:  # only for the paths declared fallible
            if impl not in fallible:
                raise
            seconds[impl] = math.inf
            logger.info("impl benchmark: %s failed (%s: %s); skipped", impl,
                        type(e).__name__, e)
    choice = min(candidates, key=seconds.__getitem__)
    if math.isinf(seconds[choice]):
        raise RuntimeError(f"impl benchmark: every path failed for {key}")
    with _lock:
        _cache[key] = Measured(choice, seconds)
    logger.debug("impl benchmark %s: %s (%s)", key, choice,
                 ", ".join(f"{i} {s * 1e3:.3g} ms" for i, s in seconds.items()))
    return choice


def replay(fn: Callable[[list[Tensor | None]], Tensor], tensors: Sequence[Tensor | None],
           params: Sequence[Tensor] = ()) -> None:
    """Run ``fn`` on detached copies of ``tensors`` (same ``requires_grad``) and, where a
    gradient is wanted, its backward — into nothing: ``torch.autograd.grad`` returns the
    gradients instead of accumulating them into ``.grad``. ``params``: further leaves
    ``fn`` reads directly (a module's parameters)."""
    grads = torch.is_grad_enabled()
    inputs = [None if t is None else t.detach().requires_grad_(grads and t.requires_grad)
              for t in tensors]
    # Identity hooks, innermost: an outer pair (torch.utils.checkpoint's, a memory probe's)
    # must not see the tensors this throw-away graph saves.
    with torch.autograd.graph.saved_tensors_hooks(_same, _same):
        y = fn(inputs)
        leaves = [t for t in inputs if t is not None and t.requires_grad]
        leaves += [p for p in params if p.requires_grad]
        if grads and leaves and y.requires_grad:
            torch.autograd.grad(y, leaves, torch.ones_like(y), allow_unused=True)


def _same(t: Tensor) -> Tensor:
    return t
