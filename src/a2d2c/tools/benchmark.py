"""Side-by-side speed and memory of static, A²D²C (every exact path) and the baselines.

Everything runs in one process: for each *case* (a layer or a whole model, a training
step or inference), every *variant* is built, warmed up, then timed one step at a time
with the variants interleaved (the order rotates every repeat), and the median of the
repeats is reported with its ratio to the static variant. The variants are read from
the conv factory (:func:`a2d2c.list_conv_layers`), so a newly registered layer is
benchmarked without touching this file; A²D²C appears once per ``impl``.

Memory, per variant:

* ``saved_mb`` — activation memory saved for backward by one training forward: the
  bytes of the unique storages packed by :func:`torch.autograd.graph.saved_tensors_hooks`,
  parameters and buffers excluded (what stays alive between forward and backward);
* ``peak_mb`` (CUDA only) — ``torch.cuda.max_memory_allocated`` during one step, minus
  what was allocated before it.

``a2d2c bench`` (:mod:`a2d2c.cli.bench`) is the command line over :func:`run_benchmark`.
"""

from __future__ import annotations

import csv
import fnmatch
import functools
import itertools
import math
import platform
import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..allocator import allocator_state, release_free_memory
from ..layers import CondConv2d, DynamicConv2d, ODConv2d
from ..layers.a2d2c import IMPLS, A2D2Conv2d
from ..layers.factory import create_conv2d, get_conv_layer, list_conv_layers
from ..ops import tuning
from ..ops.mixed_conv import TRITON_IMPLS, auto_impl, exact_impls, triton_available

#: ``torch.compile``'s ``backend``: a name (``"inductor"``) or a callable; ``None``: eager
CompileBackend = str | Callable | None

__all__ = [
    "CSV_COLUMNS",
    "DCN_VARIANTS",
    "PRESETS",
    "Case",
    "Variant",
    "csv_name",
    "grid_cases",
    "list_variants",
    "naive_dcnv3_core",
    "run_benchmark",
    "run_grid",
    "saved_activation_bytes",
]


@dataclass(frozen=True)
class Case:
    """One benchmark: a 3×3 layer (``C → C``, stride 1, padding 1) or a ResNet model.

    ``target``/``memory_target``: the issue's targets for the best A²D²C variant, as
    ratios to static (reported beside the measurement, never asserted).
    """

    name: str
    kind: str  # "layer" | "model"
    mode: str  # "train" | "infer"
    batch: int
    channels: int  # layer: in = out channels; model: input channels
    size: int  # input height = width
    model: str = "resnet18"
    stem: str = "imagenet"
    num_classes: int = 1000
    width_mult: float = 1.0
    num_kernels: int = 4
    anchors: str = ""
    target: float | None = None
    memory_target: float | None = None
    extra_variants: tuple[str, ...] = ()
    """Variants outside the conv factory this case also runs (``DCN_VARIANTS``)."""

    def __post_init__(self) -> None:
        if self.kind not in ("layer", "model"):
            raise ValueError(f"Case.kind must be 'layer' or 'model', got {self.kind!r}")
        if self.mode not in ("train", "infer"):
            raise ValueError(f"Case.mode must be 'train' or 'infer', got {self.mode!r}")


_ISSUE6 = [
    Case("layer128_b32_16x16_train", "layer", "train", 32, 128, 16,
         anchors="ODConv 1.9-4.2x, DynamicConv 1.5-1.8x", target=1.5),
    Case("layer64_b8_56x56_train", "layer", "train", 8, 64, 56,
         anchors="ODConv 1.25x, DynamicConv 1.1x", target=1.15),
    Case("cifar_resnet18_b32_train", "model", "train", 32, 3, 32, stem="cifar", num_classes=10,
         anchors="best 2.7x; saved activations ~10x", target=2.0, memory_target=2.5),
    Case("resnet18_224_b1_infer", "model", "infer", 1, 3, 224, target=1.3),
]

# The four 3×3 convs of a CIFAR ResNet-18 stage at batch 32 (to fit the cost model), and
# the same at inference.
_LAYERS = [
    Case(f"layer{c}_b32_{s}x{s}_{mode}", "layer", mode, 32, c, s)
    for mode in ("train", "infer") for c, s in ((64, 32), (128, 16), (256, 8), (512, 4))
] + [Case("layer512_b1_7x7_infer", "layer", "infer", 1, 512, 7),
     Case("layer64_b1_56x56_infer", "layer", "infer", 1, 64, 56)]

# The issue's GPU rows (bf16 on an H200): training steps of a CIFAR ResNet-18 at batch 128
# and an ImageNet ResNet-50 at 224² batch 64, peak memory measured on CUDA.
_GPU = [
    Case("cifar_resnet18_b128_train", "model", "train", 128, 3, 32, stem="cifar",
         num_classes=10, target=1.3, memory_target=1.5,
         anchors="A2D2C <=1.3x, CondConv/DynamicConv/ODConv <=1.6x"),
    Case("resnet50_224_b64_train", "model", "train", 64, 3, 224, model="resnet50",
         target=1.25, anchors="A2D2C <=1.25x"),
]

_SMOKE = [
    Case("smoke_layer_train", "layer", "train", 2, 8, 8),
    Case("smoke_layer_infer", "layer", "infer", 2, 8, 8),
    Case("smoke_model_train", "model", "train", 2, 3, 16, stem="cifar", num_classes=10,
         width_mult=0.125),
]

#: Named case lists for ``a2d2c bench --preset`` (``grid`` is :func:`run_grid`).
PRESETS: dict[str, list[Case]] = {"issue6": _ISSUE6, "layers": _LAYERS, "smoke": _SMOKE,
                                  "gpu": _GPU, "grid": []}

#: The variant suffix of ``impl="auto"`` with measured choice (:mod:`a2d2c.ops.tuning`).
TUNED = "tuned"

#: Paths that may fail on a given machine (a Triton compiler or driver problem): a bench
#: variant using one is skipped with a log line instead of ending the run.
_FALLIBLE_IMPLS = TRITON_IMPLS

#: Layers whose per-sample convolution has a selectable ``impl``.
_IMPL_LAYERS = (A2D2Conv2d, CondConv2d, DynamicConv2d, ODConv2d)


@dataclass(frozen=True)
class Variant:
    """A conv type from the factory, and for A²D²C the ``impl`` it is forced to."""

    label: str
    conv: str
    impl: str | None = None


def _is_a2d2c(conv: str) -> bool:
    builder = get_conv_layer(conv)
    target = builder.func if isinstance(builder, functools.partial) else builder
    return isinstance(target, type) and issubclass(target, A2D2Conv2d)


def list_variants(patterns: Sequence[str] | None = None, *, triton: bool = False
                  ) -> list[Variant]:
    """``static``, ``a2d2c:<impl>`` for every impl, then every other registered conv type.

    ``<layer>:tuned`` is ``impl="auto"`` with measured choice on
    (:mod:`a2d2c.ops.tuning`; its one-time measurement happens in the warm-up steps).

    ``patterns``: optional shell-style patterns on the labels (``static`` is always kept,
    it is the reference). ``triton``: also ``<layer>:triton`` for every layer with a
    selectable ``impl`` and ``<layer>:triton_plus`` where it is exact for every kernel
    size (CUDA only).
    """
    out = [Variant("static", "static")]
    a2d2c_done = False
    for name in list_conv_layers():
        if name == "static":
            continue
        if _is_a2d2c(name):
            if not a2d2c_done:
                out += [Variant(f"a2d2c:{impl}", name, impl) for impl in IMPLS
                        if not impl.startswith("triton") or triton]
                out.append(Variant("a2d2c:tuned", name, TUNED))
                a2d2c_done = True
            continue
        out.append(Variant(name, name))
        if name in ("condconv", "dynamicconv", "odconv"):
            out.append(Variant(f"{name}:tuned", name, TUNED))
        if triton and name in ("condconv", "dynamicconv", "odconv"):
            out.append(Variant(f"{name}:triton", name, "triton"))
        if triton and name in ("condconv", "dynamicconv"):  # ODConv's: 1x1 only
            out.append(Variant(f"{name}:triton_plus", name, "triton_plus"))
    if patterns:
        out = [v for v in out if v.label == "static"
               or any(fnmatch.fnmatch(v.label, p) for p in patterns)]
    return out


# ----------------------------------------------------------------------------- building
def _with_kernels(build: Callable[..., nn.Module], num_kernels: int, **kwargs) -> nn.Module:
    """Build with ``num_kernels``; layers whose K is fixed (DCD: K=1) get their default."""
    try:
        return build(num_kernels=num_kernels, **kwargs)
    except ValueError as err:
        if "num_kernels" not in str(err):
            raise
        return build(**kwargs)


def _build(case: Case, variant: Variant) -> nn.Module:
    if variant.conv in DCN_VARIANTS:
        return _build_dcn(case, variant)
    if case.kind == "layer":
        args = (variant.conv, case.channels, case.channels, 3, 1, 1)
        if variant.conv == "static":
            module = create_conv2d(*args)
        else:
            module = _with_kernels(functools.partial(create_conv2d, *args), case.num_kernels)
    else:
        from .. import create_model  # the models package (branch `models`)

        kwargs = dict(num_classes=case.num_classes, in_chans=case.channels, stem=case.stem,
                      width_mult=case.width_mult)
        if variant.conv == "static":
            module = create_model(case.model, **kwargs)
        else:
            module = _with_kernels(functools.partial(create_model, case.model,
                                                     conv=variant.conv, **kwargs),
                                   case.num_kernels)
    if variant.impl is not None:
        for m in module.modules():
            if isinstance(m, _IMPL_LAYERS):
                m.impl = "auto" if variant.impl == TUNED else variant.impl
    return module


def _resolved_impls(module: nn.Module, x: Tensor, training: bool) -> str:
    """What each dynamic layer of ``module`` computes for ``x``, e.g. ``kernel:12 plus:4``."""
    seen: list[str] = []
    hooks = []

    def hook(mod: nn.Module, args: tuple) -> None:
        seen.append(mod.resolve_impl(args[0].shape, training=training, device=args[0].device))

    for m in module.modules():
        if isinstance(m, _IMPL_LAYERS):
            hooks.append(m.register_forward_pre_hook(hook))
    if not hooks:
        return ""
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in hooks:
            h.remove()
    return _count_line(seen)


def _count_line(names: Iterable[str]) -> str:
    """``kernel:12 plus:4``: how often each path name occurs, sorted by name."""
    names = list(names)
    return " ".join(f"{name}:{names.count(name)}" for name in sorted(set(names)))


def _tuned_line(measured: dict) -> str:
    """``kernel:3 plus:4 | plus responses gemm:4``: the measured paths, then how the plus
    form's responses were measured best (``plus_responses`` signatures)."""
    paths, methods = tuning.split_choices(measured)
    line = _count_line(paths)
    return f"{line} | plus responses {_count_line(methods)}" if methods else line


# ----------------------------------------------------------------------------- memory
def saved_activation_bytes(fn: Callable[[], object], exclude: Iterable[Tensor] = ()) -> int:
    """Bytes of the unique storages autograd saves for backward while ``fn()`` runs.

    Tensors sharing a storage (views) count once; storages of ``exclude`` (parameters,
    buffers) are not counted. The graph built by ``fn`` is released before returning;
    ``fn`` must not run backward through it (the saved tensors are only counted, not
    kept: a pack hook that returned the tensor itself made every output an op saves for
    its own backward, e.g. a softmax's, a reference cycle autograd never frees — an
    input-sized leak per call, 24 GB over one bench grid run).
    """
    skip = set()
    for t in exclude:
        try:
            skip.add(t.untyped_storage().data_ptr())
        except (RuntimeError, NotImplementedError):
            pass
    sizes: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        try:
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # opaque (e.g. mkldnn) tensors
            key, nbytes = id(t), t.numel() * t.element_size()
        if key not in skip:
            sizes[key] = max(nbytes, sizes.get(key, 0))
        return nbytes  # a placeholder: holding ``t`` here could close a reference cycle

    def unpack(_placeholder: int) -> Tensor:
        raise RuntimeError("saved_activation_bytes: fn must not run backward (the saved "
                           "tensors are only counted)")

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = fn()
    del out
    return sum(sizes.values())


# ----------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _Runner:
    variant: Variant
    module: nn.Module
    step: Callable[[], object]
    forward: Callable[[], object]
    times: list[float] = field(default_factory=list)
    #: a tuned variant's own measurements (a2d2c.ops.tuning), kept apart from the other
    #: runners': CondConv and DynamicConv make the same op call, so they share signatures
    measured: dict = field(default_factory=dict)
    #: the module runs under torch.compile (then the saved-activation count is left out)
    compiled: bool = False


def _make_runner(case: Case, variant: Variant, device: torch.device, amp_dtype: torch.dtype | None,
                 channels_last: bool, seed: int, compile_backend: CompileBackend = None
                 ) -> _Runner:
    torch.manual_seed(seed)
    module = _build(case, variant).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:  # 4-d tensors only (A²D²C/ODConv keep 5-d kernel banks)
        for t in (*module.parameters(), *module.buffers()):
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=fmt)
    x = torch.randn(case.batch, case.channels, case.size, case.size, device=device)
    x = x.contiguous(memory_format=fmt)
    train = case.mode == "train"
    module.train(train)
    autocast = functools.partial(torch.autocast, device.type, dtype=amp_dtype,
                                 enabled=amp_dtype is not None)
    if case.kind == "layer" and train:
        x.requires_grad_(True)
    labels = torch.randint(0, max(case.num_classes, 1), (case.batch,), device=device)
    opt = torch.optim.SGD(module.parameters(), lr=1e-4, momentum=0.9) if train else None

    tuned = variant.impl == TUNED
    measured: dict = {}
    call = module if compile_backend is None else torch.compile(module, backend=compile_backend)

    def forward() -> Tensor:
        with autocast(), tuning.benchmark(tuned):
            if tuned:  # this runner's cache only (empty at first: it measures)
                tuning.clear_cache()
                tuning.load_cache(measured)
            out = call(x)
            if tuned:
                measured.update(tuning.cache_info())
            if case.kind == "model":
                return F.cross_entropy(out.float(), labels)
            return out.float().square().mean()

    def step() -> object:
        if not train:
            with torch.inference_mode():
                return forward()
        opt.zero_grad(set_to_none=True)
        x.grad = None
        loss = forward()
        loss.backward()
        opt.step()
        return None

    return _Runner(variant, module, step, forward, measured=measured,
                   compiled=compile_backend is not None)


def _measure_memory(runner: _Runner, device: torch.device, train: bool) -> tuple[float, float]:
    saved = math.nan
    # a compiled graph saves what the compiler decides (its own backward); the count is of
    # the eager graph and is left out for compiled runners
    if train and not runner.compiled:
        tensors = [*runner.module.parameters(), *runner.module.buffers()]
        saved = saved_activation_bytes(runner.forward, tensors) / 2**20
    peak = math.nan
    if device.type == "cuda":
        _sync(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        runner.step()
        _sync(device)
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    return saved, peak


CSV_COLUMNS = [
    "case", "kind", "mode", "variant", "conv", "impl", "resolved", "batch", "channels", "size",
    "num_kernels", "median_ms", "min_ms", "ratio", "samples_per_s", "saved_mb", "saved_ratio",
    "peak_mb", "peak_ratio", "target", "memory_target", "anchors", "repeats", "device",
    "dtype", "channels_last", "compile", "threads", "allocator", "torch", "a2d2c", "params",
]


def _device_tag(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu{torch.get_num_threads()}t"
    return _slug(name)


def _slug(name: str) -> str:
    """``name`` as a file-name part: runs of other characters than letters, digits and
    dots become one ``-``."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")


def csv_name(preset: str, device: torch.device, dtype: str,
             compile_backend: CompileBackend = None) -> str:
    """File name recording preset, device, dtype, compilation and versions, e.g.
    ``bench_issue6_cpu2t_fp32_torch2.14.1_a2d2c0.1.0.csv`` or
    ``bench_issue6_cpu2t_fp32_compiled-inductor_torch2.14.1_a2d2c0.1.0.csv``."""
    from .. import __version__

    torch_version = torch.__version__.split("+")[0]
    compiled = "" if compile_backend is None else f"_compiled-{_backend_name(compile_backend)}"
    return (f"bench_{preset}_{_device_tag(device)}_{dtype}{compiled}_torch{torch_version}"
            f"_a2d2c{__version__}.csv")


def _backend_name(backend: CompileBackend) -> str:
    if backend is None:
        return ""
    if isinstance(backend, str):
        return backend
    return _slug(type(backend).__name__)


def _run_case(case: Case, variants: Sequence[Variant], device: torch.device,
              amp_dtype: torch.dtype | None, channels_last: bool, repeats: int, warmup: int,
              log: Callable[[str], None], min_sample_s: float = 0.0,
              compile_backend: CompileBackend = None) -> list[dict]:
    """Time every variant of ``case``, interleaved; one row per variant.

    ``min_sample_s``: each timed sample runs as many steps as it takes (calibrated after
    the warm-up) to last at least this long, and reports the time per step, so that
    sub-millisecond layers are not measured at the timer's and the scheduler's
    resolution.
    """
    from .. import __version__

    train = case.mode == "train"
    runners = []
    variants = [*variants, *(Variant(label, label) for label in case.extra_variants)]
    for v in variants:
        try:
            runners.append(_make_runner(case, v, device, amp_dtype, channels_last, seed=0,
                                        compile_backend=compile_backend))
        except (TypeError, ValueError, ImportError) as err:
            log(f"  skip {v.label}: {err}")
    inner = {}
    for r in list(runners):
        try:
            # a tuned runner measures in its first step, Triton compiles there; a compiled
            # module compiles in its first and was seen to be slow in its second (aot_eager,
            # CPU, no recompilation logged), so two untimed steps
            least = 2 if r.compiled else (1 if r.variant.impl in (*_FALLIBLE_IMPLS, TUNED) else 0)
            for _ in range(max(warmup, least)):
                r.step()
        except Exception as err:  # only the Triton paths may fail here
            if r.variant.impl not in _FALLIBLE_IMPLS:
                raise
            log(f"  skip {r.variant.label}: {type(err).__name__}: {err}")
            runners.remove(r)
            continue
        _sync(device)
        t0 = time.perf_counter()
        if min_sample_s > 0:
            r.step()
            _sync(device)
        once = time.perf_counter() - t0
        inner[id(r)] = max(1, math.ceil(min_sample_s / once)) if min_sample_s > 0 else 1
    _sync(device)
    for rep in range(repeats):
        shift = rep % len(runners)
        for r in runners[shift:] + runners[:shift]:
            n = inner[id(r)]
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(n):
                r.step()
            _sync(device)
            r.times.append((time.perf_counter() - t0) / n)
    rows = []
    x_probe = torch.randn(case.batch, case.channels, case.size, case.size, device=device)
    for r in runners:
        saved, peak = _measure_memory(r, device, train)
        med = statistics.median(r.times)
        rows.append(dict(
            case=case.name, kind=case.kind, mode=case.mode, variant=r.variant.label,
            conv=r.variant.conv, impl=r.variant.impl or "",
            resolved=(_tuned_line(r.measured) if r.variant.impl == TUNED
                      else _resolved_impls(r.module, x_probe, train)),
            batch=case.batch,
            channels=case.channels, size=case.size, num_kernels=case.num_kernels,
            median_ms=med * 1e3, min_ms=min(r.times) * 1e3, samples_per_s=case.batch / med,
            saved_mb=saved, peak_mb=peak, target=case.target, memory_target=case.memory_target,
            anchors=case.anchors, repeats=repeats, device=_device_tag(device),
            dtype="bf16" if amp_dtype == torch.bfloat16 else
            ("fp16" if amp_dtype == torch.float16 else "fp32"),
            channels_last=channels_last, compile=_backend_name(compile_backend),
            threads=torch.get_num_threads(),
            allocator=allocator_state(), torch=torch.__version__, a2d2c=__version__,
            params=sum(p.numel() for p in r.module.parameters()),
        ))
    static = next((row for row in rows if row["variant"] == "static"), None)
    for row in rows:
        for key, ref in (("ratio", "median_ms"), ("saved_ratio", "saved_mb"),
                         ("peak_ratio", "peak_mb")):
            base = static[ref] if static else math.nan
            row[key] = row[ref] / base if base and not math.isnan(base) else math.nan
    return rows


def _fmt(v: float | None, width: int, digits: int, suffix: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        text = "-"
    else:
        text = f"{v:.{digits}f}{suffix}"
    return text.rjust(width)


def format_rows(rows: Sequence[dict]) -> str:
    """A plain-text table per case: time, ratio to static, memory and its ratio."""
    lines = []
    for case in dict.fromkeys(r["case"] for r in rows):
        sub = [r for r in rows if r["case"] == case]
        first = sub[0]
        head = f"{case}: {first['kind']} {first['mode']}, batch {first['batch']}, "
        head += f"{first['channels']}x{first['size']}x{first['size']}"
        if first["target"]:
            head += f"; target <= {first['target']}x"
        if first["memory_target"]:
            head += f", saved memory <= {first['memory_target']}x"
        if first["anchors"]:
            head += f"; anchors: {first['anchors']}"
        lines.append(head)
        lines.append(f"  {'variant':<16}{'median ms':>11}{'ratio':>8}{'saved MB':>10}"
                     f"{'ratio':>7}{'peak MB':>9}{'ratio':>7}  resolved")
        for r in sub:
            lines.append(
                f"  {r['variant']:<16}{_fmt(r['median_ms'], 11, 1)}{_fmt(r['ratio'], 8, 2, 'x')}"
                f"{_fmt(r['saved_mb'], 10, 1)}{_fmt(r['saved_ratio'], 7, 2, 'x')}"
                f"{_fmt(r['peak_mb'], 9, 1)}{_fmt(r['peak_ratio'], 7, 2, 'x')}  {r['resolved']}")
    return "\n".join(lines)


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v)
                             for k, v in row.items() if k in CSV_COLUMNS})


def run_benchmark(
    cases: Sequence[Case],
    *,
    device: str | torch.device = "cpu",
    dtype: str = "fp32",
    channels_last: bool | None = None,
    repeats: int = 7,
    warmup: int = 2,
    variants: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    preset: str = "custom",
    log: Callable[[str], None] = print,
    compile_backend: CompileBackend = None,
) -> tuple[list[dict], Path | None]:
    """Run ``cases`` for every variant; returns the rows and the CSV path (if written).

    Args:
        device: ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        dtype: ``"fp32"``, or ``"bf16"``/``"fp16"`` for autocast (AMP) in that dtype.
        channels_last: model and input in channels_last (default: on for CUDA).
        repeats: timed steps per variant (interleaved; the median is reported).
        variants: shell-style patterns on variant labels (default: all).
        out_dir: where to write the CSV (:func:`csv_name`); ``None``: no file.
        compile_backend: run every variant under ``torch.compile(module, backend=...)``
            (e.g. ``"inductor"``); ``None``: eager. At least two untimed steps (the first
            compiles); the saved-activation column is left empty (a compiled graph saves
            what its compiler decides).
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype not in amp:
        raise ValueError(f"dtype must be one of {tuple(amp)}, got {dtype!r}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    if channels_last is None:
        channels_last = device.type == "cuda"
    chosen = list_variants(variants, triton=device.type == "cuda" and triton_available())
    log(f"a2d2c bench: {len(cases)} case(s) x {len(chosen)} variants on {_device_tag(device)}, "
        f"{dtype}, channels_last={channels_last}, "
        f"compile={_backend_name(compile_backend) or 'no'}, {repeats} repeats, allocator "
        f"{allocator_state()}, torch {torch.__version__}, {platform.machine()}")
    rows: list[dict] = []
    path = None if out_dir is None else Path(out_dir) / csv_name(preset, device, dtype,
                                                                  compile_backend)
    for case in cases:
        case_rows = _run_case(case, chosen, device, amp[dtype], channels_last, repeats, warmup,
                              log, compile_backend=compile_backend)
        rows += case_rows
        log(format_rows(case_rows))
        if path is not None:  # rewritten after every case: an interrupted run keeps its rows
            _write_csv(path, rows)
    if path is not None:
        log(f"wrote {path}")
    return rows, path


def rows_as_dicts(cases: Sequence[Case]) -> list[dict]:
    """The cases as plain dicts (for printing a preset)."""
    return [asdict(c) for c in cases]


# ----------------------------------------------------------------------------- DCN layers
# DCNv3/DCNv4 token mixers beside the 3×3 convolutions of the layer cases (C → C, same
# size; group = C / 16 as in InternImage), wrapped to take and return NCHW. The
# ``:grid_sample`` variant is the naive route (the official PyTorch reference's: one
# grid_sample over all P points, P× the output saved for backward), kept here only as the
# memory baseline of a2d2c.ops.dcnv3_core.


def naive_dcnv3_core(value: Tensor, offset: Tensor, mask: Tensor, kernel_h: int, kernel_w: int,
                     stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
                     dilation_w: int, group: int, group_channels: int, offset_scale: float,
                     remove_center: bool) -> Tensor:
    """:func:`a2d2c.ops.dcnv3_core` by one ``grid_sample`` of every point at once."""
    n, h, w, c = value.shape
    _, ho, wo, _ = offset.shape
    pts = [(i, j) for i in range(kernel_w) for j in range(kernel_h)
           if not (remove_center and i == kernel_w // 2 and j == kernel_h // 2)]
    s = offset_scale
    cw, ch = (dilation_w * (kernel_w - 1)) >> 1, (dilation_h * (kernel_h - 1)) >> 1
    dt = offset.dtype if offset.dtype == torch.float64 else torch.float32
    ix = torch.tensor([i * dilation_w for i, _ in pts], dtype=dt, device=value.device)
    jy = torch.tensor([j * dilation_h for _, j in pts], dtype=dt, device=value.device)
    bx = torch.arange(wo, dtype=dt, device=value.device) * stride_w - pad_w + cw - cw * s
    by = torch.arange(ho, dtype=dt, device=value.device) * stride_h - pad_h + ch - ch * s
    off = offset.to(dt).view(n, ho, wo, group, len(pts), 2)
    x = bx.view(1, 1, -1, 1, 1) + (ix + off[..., 0]) * s
    y = by.view(1, -1, 1, 1, 1) + (jy + off[..., 1]) * s
    # pixel → grid_sample's normalised coordinates (align_corners=False: -1 = left edge)
    grid = torch.stack(((2 * x + 1) / w - 1, (2 * y + 1) / h - 1), -1)
    grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(n * group, ho * wo, len(pts), 2)
    v = value.view(n, h, w, group, group_channels).permute(0, 3, 4, 1, 2)
    v = v.reshape(n * group, group_channels, h, w)
    sampled = F.grid_sample(v, grid.to(v.dtype), mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # (N·G, D, Ho·Wo, P)
    m = mask.view(n, ho * wo, group, len(pts)).permute(0, 2, 1, 3).reshape(n * group, 1,
                                                                          ho * wo, len(pts))
    out = (sampled * m.to(sampled.dtype)).sum(-1)  # (N·G, D, Ho·Wo)
    return out.view(n, c, ho * wo).transpose(1, 2).reshape(n, ho, wo, c)


class _DCNLayer(nn.Module):
    """A DCN token mixer as an NCHW ``C → C`` layer."""

    def __init__(self, kind: str, channels: int, naive: bool) -> None:
        super().__init__()
        from ..layers.dcn import DCNv3, DCNv4

        cls = DCNv3 if kind == "dcnv3" else DCNv4
        if naive:
            cls = type(f"{cls.__name__}GridSample", (cls,),
                       {"core": staticmethod(naive_dcnv3_core)})
        self.kind = kind
        self.dcn = cls(channels, group=max(1, channels // 16))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        t = x.permute(0, 2, 3, 1)
        if self.kind == "dcnv3":
            return self.dcn(t).permute(0, 3, 1, 2)
        return self.dcn(t.reshape(n, h * w, c), (h, w)).view(n, h, w, c).permute(0, 3, 1, 2)


#: The DCN variants of the ``dcn`` preset's cases (beside the conv factory's).
DCN_VARIANTS = ("dcnv3", "dcnv4", "dcnv4:grid_sample")


def _build_dcn(case: Case, variant: Variant) -> nn.Module:
    if case.kind != "layer":
        raise ValueError(f"{variant.label} is a layer variant; case {case.name!r} is a model")
    kind, _, route = variant.conv.partition(":")
    return _DCNLayer(kind, case.channels, naive=route == "grid_sample")


# InternImage-T's stage 1 and stage 3 at 224² (``a2d2c bench --preset dcn --variants static``
# runs only the 3×3 conv beside the DCN layers).
PRESETS["dcn"] = [
    Case("dcn64_b8_56x56_train", "layer", "train", 8, 64, 56, extra_variants=DCN_VARIANTS),
    Case("dcn256_b32_14x14_train", "layer", "train", 32, 256, 14, extra_variants=DCN_VARIANTS),
    Case("dcn64_b1_56x56_infer", "layer", "infer", 1, 64, 56, extra_variants=DCN_VARIANTS),
]

# ----------------------------------------------------------------------------- grid
#: The grid of ``a2d2c bench --preset grid``: 3×3 layers ``C → C`` (stride 1, padding 1).
#: ``max_gmacs`` drops points whose static forward exceeds it (GMACs per step), so that
#: the grid fits a CPU; ``None`` keeps every point. A grid is the product of its channels,
#: sizes, batches and modes, or (``points``) a list of ``(channels, size, batch)``:
#: ``stages`` holds the 3×3 layers of the two CPU training targets, which the reduced
#: grid's cap leaves out in part — a CIFAR ResNet-18's four stages at batch 32 and the
#: small-channel network's (width 1/8: 8-64 channels, 28² input) at batch 128.
GRIDS: dict[str, dict] = {
    "full": dict(channels=(8, 16, 32, 64, 128, 256, 512), sizes=(4, 7, 14, 28, 56, 112),
                 batches=(1, 8, 32, 128, 256), modes=("train", "infer"), max_gmacs=None),
    "reduced": dict(channels=(8, 32, 128, 512), sizes=(4, 14, 28, 56, 112),
                    batches=(1, 8, 32, 128, 256), modes=("train", "infer"), max_gmacs=1.0),
    "tiny": dict(channels=(8,), sizes=(4,), batches=(2,), modes=("train", "infer"),
                 max_gmacs=None),
    "stages": dict(points=((64, 32, 32), (128, 16, 32), (256, 8, 32), (512, 4, 32),
                           (8, 28, 128), (16, 14, 128), (32, 7, 128), (64, 4, 128)),
                   modes=("train",), max_gmacs=None),
}
GRID_LAYERS = ("a2d2c", "condconv", "dynamicconv", "odconv")
GRID_COLUMNS = ["case", "mode", "batch", "channels", "size", "layer", "impl", "auto_choice",
                "median_ms", "ratio", "best_impl", "regret", "load1", "threads", "device",
                "torch"]


def grid_cases(grid: str = "reduced") -> list[Case]:
    """The layer cases of a grid (see :data:`GRIDS`), cheapest first."""
    spec = GRIDS[grid]
    points = spec.get("points") or itertools.product(spec["channels"], spec["sizes"],
                                                     spec["batches"])
    cases = []
    for c, s, b in points:
        gmacs = b * c * c * 9 * s * s / 1e9
        if spec["max_gmacs"] is not None and gmacs > spec["max_gmacs"]:
            continue
        for mode in spec["modes"]:
            cases.append(Case(f"grid_c{c}_s{s}_b{b}_{mode}", "layer", mode, b, c, s))
    return sorted(cases, key=lambda c: c.batch * c.channels ** 2 * c.size ** 2)


def _grid_exact(layer: str, triton: bool) -> tuple[str, ...]:
    """The exact paths the grid times for ``layer``: the torch ones, and with ``triton``
    (CUDA with triton installed) the Triton ones — which only the measured choice, not
    the cost model, can pick."""
    # ODConv's spatial attention depends on the tap (3×3 here): a factored tap scale, which
    # the plus form takes but the fused Triton plus form does not
    extra = (("triton",) if layer == "odconv" else _FALLIBLE_IMPLS) if triton else ()
    return (*exact_impls(False), *extra)


def _grid_variants(triton: bool = False) -> list[Variant]:
    out = [Variant("static", "static")]
    for name in GRID_LAYERS:
        for impl in ("auto", TUNED, *_grid_exact(name, triton)):
            out.append(Variant(f"{name}:{impl}", name, impl))
    return out


def _grid_choice(layer: str, case: Case, training: bool, device: torch.device) -> str:
    """What ``impl="auto"`` of ``layer`` runs at a grid point (A²D²C: its own model,
    which adds the attention descriptor; the baselines: the op's)."""
    x_shape = (case.batch, case.channels, case.size, case.size)
    if layer == "a2d2c":
        conv = A2D2Conv2d(case.channels, case.channels, 3, padding=1,
                          num_kernels=case.num_kernels)
        return conv.resolve_impl(x_shape, training=training, device=device)
    return auto_impl(x_shape, (case.num_kernels, case.channels, case.channels, 3, 3),
                     False, training=training, device_type=device.type,
                     padding=(1, 1), tap_scaled=layer == "odconv")


def _load1() -> float:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return math.nan


def run_grid(*, grid: str = "reduced", device: str | torch.device = "cpu",
             repeats: int = 3, warmup: int = 1, out_dir: str | Path | None = None,
             min_sample_s: float = 0.05, log: Callable[[str], None] = print
             ) -> tuple[list[dict], Path | None]:
    """Every exact path and ``auto`` of every layer type over a grid of layer shapes.

    For each point and layer type: the time of each path, auto's *regret* (auto's time /
    the fastest exact path's) and auto's ratio to the static convolution. On CUDA with
    triton installed the exact paths include ``triton`` and (where exact)
    ``triton_plus``, so there the regret also counts what the cost model, which never
    picks a Triton path, leaves on the table. Rows are
    appended to ``bench_grid_<grid>_<device>.csv`` after every point, and points already
    in the file are skipped, so an interrupted run resumes where it stopped.
    """
    device = torch.device(device)
    cases = grid_cases(grid)
    triton = device.type == "cuda" and triton_available()
    variants = _grid_variants(triton)
    name = f"bench_grid_{grid}_{_device_tag(device)}.csv"
    path = None if out_dir is None else Path(out_dir) / name
    done: set[str] = set()
    if path is not None and path.exists():
        with path.open() as f:
            done = {row["case"] for row in csv.DictReader(f)}
    log(f"a2d2c bench --preset grid ({grid}): {len(cases)} points, {len(done)} done, "
        f"{len(variants)} variants, {torch.get_num_threads()} threads on {_device_tag(device)}")
    all_rows: list[dict] = []
    for case in cases:
        if case.name in done:
            continue
        release_free_memory()  # the previous point's blocks (a2d2c.allocator)
        load = _load1()
        rows = _run_case(case, variants, device, None, device.type == "cuda", repeats, warmup,
                         lambda _msg: None, min_sample_s=min_sample_s)
        by_label = {r["variant"]: r for r in rows}
        out_rows = []
        train = case.mode == "train"
        for r in rows:
            layer, _, impl = r["variant"].partition(":")
            row = dict(case=case.name, mode=case.mode, batch=case.batch,
                       channels=case.channels, size=case.size, layer=layer,
                       impl=impl or "static", auto_choice="", median_ms=r["median_ms"],
                       ratio=r["ratio"], best_impl="", regret=math.nan, load1=load,
                       threads=torch.get_num_threads(), device=_device_tag(device),
                       torch=torch.__version__)
            if impl in ("auto", TUNED):
                exact = {i: by_label[f"{layer}:{i}"]["median_ms"]
                         for i in _grid_exact(layer, triton) if f"{layer}:{i}" in by_label}
                best = min(exact, key=exact.__getitem__)
                row["best_impl"] = best
                row["regret"] = r["median_ms"] / exact[best]
                row["auto_choice"] = (r["resolved"].split(":")[0] if impl == TUNED
                                      else _grid_choice(layer, case, train, device))
            out_rows.append(row)
        all_rows += out_rows
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not path.exists()
            with path.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=GRID_COLUMNS)
                if new:
                    writer.writeheader()
                for row in out_rows:
                    writer.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v)
                                     for k, v in row.items()})
        autos = [r for r in out_rows if r["impl"] == "auto"]
        log(f"{case.name} (load {load:.1f}): static {by_label['static']['median_ms']:.2f} ms; "
            + ", ".join(f"{r['layer']} auto={r['auto_choice']} {r['ratio']:.2f}x regret "
                        f"{r['regret']:.2f}" for r in autos))
    if path is not None:
        log(f"wrote {path}")
    return all_rows, path
