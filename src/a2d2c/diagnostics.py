"""Is a dynamic layer dynamic? Attention statistics for every dynamic layer type.

:func:`attention_stats` runs a model (in ``eval()`` mode, without gradients) over some
inputs and reports, for every attention *head* of every dynamic layer (SPEC §7):

``entropy_ratio``
    ``H(π)/log K`` averaged over samples (and channels): 1 = uniform over the K kernels.
``mean_max``
    the mean of ``max_k π`` (uniform: ``1/K``; one-hot: 1).
``sample_sd``
    the between-sample standard deviation of the attention: for each attention value
    (kernel k, channel o, …) its population sd over all inputs seen, averaged over the
    values. 0 = not input-dependent: the layer is then a static convolution.
``channel_sd``
    the between-channel standard deviation (heads with a channel axis: A²D²C's π over
    its O output channels, ODConv's channel/filter gates, DCD's Λ): per sample and kernel,
    the sd over channels, averaged.
``output_change``
    how much the dynamics matter: the layer is run again on the same input with this
    head's attention replaced by its mean over the batch, and the relative change of the
    layer's output ``‖y_frozen − y‖ / ‖y‖`` (sums of squares over every batch) is reported.
    It depends on the batch (the mean is the batch's), so compare it at one batch size.

The heads per layer type (how each layer computes them is in its own module):

=================  ===========  ====================  =====================================
layer              head         shape                 statistics
=================  ===========  ====================  =====================================
``A2D2Conv2d``     ``pi``       ``(B, K, O)``         all (softmax over K per channel)
``CondConv2d``     ``routing``  ``(B, K)``            all; entropy and max of ``r/Σ_k r``
                                                      (the routing is K sigmoids)
``DynamicConv2d``  ``kernel``   ``(B, K)``            all but ``channel_sd``
``ODConv2d``       ``kernel``   ``(B, K)``            all but ``channel_sd``
                   ``channel``  ``(B, C)`` gates      ``sample_sd``, ``channel_sd``
                   ``filter``   ``(B, O)`` gates      ``sample_sd``, ``channel_sd``
                   ``spatial``  ``(B, kh·kw)`` gates  ``sample_sd``
``DCDConv2d``,     ``lambda``   ``(B, O)`` in [0, 2]  ``sample_sd``, ``channel_sd``
``DCDLinear``      ``phi``      ``(B, L, L)``         ``sample_sd`` (of ``Φ̃``, ``Φ = I + Φ̃``)
=================  ===========  ====================  =====================================

Mechanism: each layer type exposes one method that computes its attention
(``_attention`` of A²D²C, ``routing_weights``, ``attention``, ``attentions``); while
:func:`attention_stats` runs, that method is shadowed on the *instance* (nothing changes
on the class or in the layer's code) by a wrapper that records its result, or returns its
batch mean for the frozen re-run, which a forward hook on the layer performs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .layers import A2D2Conv2d, CondConv2d, DCDConv2d, DCDLinear, DynamicConv2d, ODConv2d

__all__ = ["AttentionReport", "HeadStats", "attention_stats", "dynamic_layers",
           "plot_attention_stats"]


@dataclass(frozen=True)
class _Head:
    """How to read one head out of a layer's attention method's return value."""

    name: str
    get: Callable[[Any], Tensor | None]
    put: Callable[[Any, Tensor], Any]  # the return value with this head replaced
    distribution: bool  # a distribution over K along dim 1 (entropy, max)
    channel_dim: int | None  # the channel axis for channel_sd (None: no channel axis)
    normalise: bool = False  # entropy/max of x / Σ_k x (CondConv's sigmoid routing)


def _whole(name: str, distribution: bool, channel_dim: int | None,
           normalise: bool = False) -> _Head:
    return _Head(name, lambda out: out, lambda out, t: t, distribution, channel_dim, normalise)


def _item(key: Any, name: str, distribution: bool, channel_dim: int | None) -> _Head:
    def put(out: Any, t: Tensor) -> Any:
        if isinstance(out, dict):
            return {**out, key: t}
        seq = list(out)
        seq[key] = t
        return tuple(seq)

    return _Head(name, lambda out: out[key], put, distribution, channel_dim)


#: layer type → (name of the method that computes its attention, its heads)
_ADAPTERS: dict[type[nn.Module], tuple[str, tuple[_Head, ...]]] = {
    A2D2Conv2d: ("_attention", (_whole("pi", True, 2),)),
    CondConv2d: ("routing_weights", (_whole("routing", True, None, normalise=True),)),
    DynamicConv2d: ("attention", (_whole("kernel", True, None),)),
    ODConv2d: ("attentions", (_item("kernel", "kernel", True, None),
                              _item("channel", "channel", False, 1),
                              _item("filter", "filter", False, 1),
                              _item("spatial", "spatial", False, None))),
    DCDConv2d: ("attention", (_item(0, "lambda", False, 1), _item(1, "phi", False, None))),
    DCDLinear: ("attention", (_item(0, "lambda", False, 1), _item(1, "phi", False, None))),
}


def _adapter(module: nn.Module) -> tuple[str, tuple[_Head, ...]] | None:
    for cls in type(module).__mro__:
        if cls in _ADAPTERS:
            return _ADAPTERS[cls]
    return None


def dynamic_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The dynamic layers of ``model`` that :func:`attention_stats` reads, by name."""
    return {name: m for name, m in model.named_modules() if _adapter(m) is not None}


@dataclass
class HeadStats:
    """The statistics of one attention head of one layer (see the module docstring)."""

    layer: str
    kind: str
    head: str
    shape: str  # per-sample shape of the attention, e.g. "4x16"
    entropy_ratio: float | None
    mean_max: float | None
    sample_sd: float
    channel_sd: float | None
    output_change: float
    samples: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Accumulator:
    """Running sums of one head over the batches (float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.rows = 0  # samples × positions counted in entropy/max
        self.s1: Tensor | None = None
        self.s2: Tensor | None = None
        self.entropy = 0.0
        self.maxsum = 0.0
        self.chan = 0.0
        self.chan_rows = 0
        self.d2 = 0.0
        self.y2 = 0.0
        self.shape = ""

    def add(self, a: Tensor, head: _Head, k: int | None) -> None:
        a = a.detach().double()
        b = a.shape[0]
        self.shape = "x".join(str(s) for s in a.shape[1:])
        flat = a.reshape(b, -1)
        s1, s2 = flat.sum(0), flat.square().sum(0)
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.n += b
        if head.distribution and k is not None and k > 1:
            p = a / a.sum(1, keepdim=True) if head.normalise else a
            ent = -(p * torch.log(p.clamp_min(1e-300))).sum(1)  # (B, *rest)
            self.entropy += float(ent.sum()) / math.log(k)
            self.maxsum += float(p.amax(1).sum())
            self.rows += ent.numel()
        if head.channel_dim is not None and a.shape[head.channel_dim] > 1:
            sd = a.std(head.channel_dim, unbiased=False)
            self.chan += float(sd.sum())
            self.chan_rows += sd.numel()

    def sample_sd(self) -> float:
        if self.s1 is None or self.n == 0:
            return float("nan")
        mean = self.s1 / self.n
        var = (self.s2 / self.n - mean.square()).clamp_min(0)
        return float(var.sqrt().mean())


def _batch_mean(t: Tensor) -> Tensor:
    return t.mean(0, keepdim=True).expand_as(t)


def _inputs(data: Any) -> Iterable[Tensor]:
    if isinstance(data, Tensor):
        yield data
        return
    for item in data:
        if isinstance(item, (tuple, list)):
            item = item[0]
        if isinstance(item, dict):
            item = item.get("image", next(iter(item.values())))
        if not isinstance(item, Tensor):
            raise TypeError("attention_stats expects a tensor, or an iterable of tensors or "
                            f"of (input, target) batches, got items of type {type(item).__name__}")
        yield item


def attention_stats(model: nn.Module, loader_or_batches: Any, *,
                    max_samples: int | None = None,
                    device: torch.device | str | None = None) -> AttentionReport:
    """Attention statistics of every dynamic layer of ``model`` over some inputs.

    Args:
        model: any module; its dynamic layers (A²D²C, CondConv, DynamicConv, ODConv,
            DCD) are found by type. It runs in ``eval()`` mode without gradients (A²D²C
            then samples deterministically, ``eval_sampling``); its mode is restored.
        loader_or_batches: a tensor batch, or an iterable of batches — tensors or
            ``(input, target)`` pairs (a ``DataLoader``).
        max_samples: stop after this many inputs (the last batch is cut).
        device: where to run (default: the model's parameters' device).

    Returns:
        an :class:`AttentionReport`, one :class:`HeadStats` per (layer, head).
    """
    layers = dynamic_layers(model)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    accs: dict[tuple[str, str], _Accumulator] = {}
    state = {"mode": "record", "freeze": None}
    captured: dict[str, list[Any]] = {}
    handles = []

    def shadow(name: str, layer: nn.Module, method: str) -> None:
        original = getattr(layer, method)  # the bound method of the class

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            if state["mode"] == "record":
                captured[name].append(out)
                return out
            head = state["freeze"]
            if head is None:
                return out
            t = head.get(out)
            return out if t is None else head.put(out, _batch_mean(t))

        layer.__dict__[method] = wrapper

    def pre_hook(name: str) -> Callable:
        def hook(mod: nn.Module, args: tuple) -> None:
            if state["mode"] == "record":
                captured[name] = []
        return hook

    def post_hook(name: str, heads: Sequence[_Head]) -> Callable:
        def hook(mod: nn.Module, args: tuple, output: Tensor) -> None:
            if state["mode"] != "record":
                return
            outs = captured.pop(name, [])
            if not outs:
                return
            k = getattr(mod, "num_kernels", None)
            state["mode"] = "freeze"
            try:
                for head in heads:
                    parts = [head.get(o) for o in outs]
                    if any(p is None for p in parts):
                        continue  # a head the layer leaves out (ODConv)
                    # A²D²C's blocked inference path computes π per block of channels
                    a = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
                    acc = accs.setdefault((name, head.name), _Accumulator())
                    acc.add(a, head, k)
                    state["freeze"] = head
                    frozen = mod(*args)
                    acc.d2 += float((frozen.double() - output.double()).square().sum())
                    acc.y2 += float(output.double().square().sum())
            finally:
                state["mode"], state["freeze"] = "record", None
        return hook

    for name, layer in layers.items():
        method, heads = _adapter(layer)
        shadow(name, layer, method)
        handles.append(layer.register_forward_pre_hook(pre_hook(name)))
        handles.append(layer.register_forward_hook(post_hook(name, heads)))
    was_training = model.training
    seen = 0
    try:
        model.eval()
        with torch.no_grad():
            for x in _inputs(loader_or_batches):
                if max_samples is not None:
                    if seen >= max_samples:
                        break
                    x = x[: max_samples - seen]
                model(x.to(device))
                seen += x.shape[0]
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
        for layer in layers.values():
            layer.__dict__.pop(_adapter(layer)[0], None)
    rows = []
    for (name, head_name), acc in accs.items():
        layer = layers[name]
        head = next(h for h in _adapter(layer)[1] if h.name == head_name)
        has_dist = head.distribution and acc.rows > 0
        rows.append(HeadStats(
            layer=name or "(model)", kind=type(layer).__name__, head=head_name,
            shape=acc.shape,
            entropy_ratio=acc.entropy / acc.rows if has_dist else None,
            mean_max=acc.maxsum / acc.rows if has_dist else None,
            sample_sd=acc.sample_sd(),
            channel_sd=acc.chan / acc.chan_rows if acc.chan_rows else None,
            output_change=math.sqrt(acc.d2 / acc.y2) if acc.y2 > 0 else 0.0,
            samples=acc.n))
    return AttentionReport(rows, seen)


_COLUMNS = ("entropy_ratio", "mean_max", "sample_sd", "channel_sd", "output_change")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


@dataclass
class AttentionReport:
    """The result of :func:`attention_stats`: one row per (layer, head)."""

    rows: list[HeadStats]
    samples: int

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[str, str]) -> HeadStats:
        layer, head = key
        for r in self.rows:
            if r.layer == layer and r.head == head:
                return r
        raise KeyError(f"no head {head!r} of layer {layer!r}; have "
                       f"{[(r.layer, r.head) for r in self.rows]}")

    def summary(self) -> dict[str, dict[str, float | None]]:
        """Per head name, the mean of each statistic over the layers (``None``: n/a)."""
        out: dict[str, dict[str, float | None]] = {}
        for head in dict.fromkeys(r.head for r in self.rows):
            group = [r for r in self.rows if r.head == head]
            stats: dict[str, float | None] = {}
            for col in _COLUMNS:
                vals = [getattr(r, col) for r in group if getattr(r, col) is not None]
                stats[col] = sum(vals) / len(vals) if vals else None
            out[head] = stats
        return out

    def summary_line(self) -> str:
        """One line for a progress log, e.g. ``pi: H/logK 0.97 max 0.31 sd_b 0.021 Δy 0.04``."""
        parts = []
        for head, s in self.summary().items():
            part = f"{head}:"
            if s["entropy_ratio"] is not None:
                part += f" H/logK {s['entropy_ratio']:.3f} max {s['mean_max']:.3f}"
            part += f" sd_b {s['sample_sd']:.4f} dy {s['output_change']:.4f}"
            parts.append(part)
        return "; ".join(parts)

    def to_text(self) -> str:
        """A fixed-width table, one line per (layer, head)."""
        head = ("layer", "type", "head", "shape", "H/logK", "mean max", "sd samples",
                "sd channels", "out change")
        lines = [[r.layer, r.kind, r.head, r.shape, *(_fmt(getattr(r, c)) for c in _COLUMNS)]
                 for r in self.rows]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
        fmt = "  ".join(f"{{:<{w}}}" if i < 4 else f"{{:>{w}}}" for i, w in enumerate(widths))
        out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*line) for line in lines]
        out.append(f"({self.samples} inputs; sd samples = between-sample sd of the attention, "
                   "0 = not input-dependent; out change = relative change of the layer's "
                   "output with this head frozen to its batch mean)")
        return "\n".join(out)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.rows]


def plot_attention_stats(report: AttentionReport, path: str, title: str = "") -> str:
    """Draw the per-layer statistics (one panel per statistic) into a PNG at ``path``."""
    from ._optional import require

    matplotlib = require("matplotlib", "plotting attention diagnostics")  # one-line error
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    heads = list(dict.fromkeys(r.head for r in report.rows))
    fig, axes = plt.subplots(1, len(_COLUMNS), figsize=(4 * len(_COLUMNS), 3.6))
    labels = {"entropy_ratio": "entropy / log K (1 = uniform)", "mean_max": "mean max",
              "sample_sd": "between-sample sd", "channel_sd": "between-channel sd",
              "output_change": "output change, frozen to batch mean"}
    for ax, col in zip(axes, _COLUMNS, strict=True):
        for head in heads:
            group = [(i, getattr(r, col)) for i, r in enumerate(
                [r for r in report.rows if r.head == head]) if getattr(r, col) is not None]
            if group:
                ax.plot([g[0] for g in group], [g[1] for g in group], "o-", ms=3, label=head)
        ax.set_title(labels[col], fontsize=9)
        ax.set_xlabel("dynamic layer (model order)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle(title or f"attention diagnostics ({report.samples} inputs)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
