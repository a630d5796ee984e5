"""Parameters and multiply-adds of the path a model actually executes.

MAdds are measured, not derived from a formula: one forward pass at batch size 1 under
:class:`torch.utils.flop_counter.FlopCounterMode`, which counts every convolution
(functional and grouped included — the kernel form's per-sample conv and the baselines'
aggregated convs are ``aten.convolution`` calls like any other) and every matrix
product (``mm``, ``addmm``, ``bmm``, ``einsum``'s lowering). One multiply-add is two
FLOPs, so ``MAdds = FLOPs / 2``.

Convention (the field's, e.g. torchvision's 1.814 GMAdds for ResNet-18): elementwise
work — BatchNorm, activations, pooling, residual additions, softmax — is not counted.
One elementwise op *is* counted because it is the dynamic layers' characteristic extra
cost: the kernel aggregation ``Σ_k π_k ⊙ W_k``, which every aggregating layer here
(A²D²C's kernel form, CondConv, DynamicConv, ODConv) computes with fused
multiply-adds (``torch.addcmul``), one MAdd per output element. That is what the
dynamic-convolution papers count as "kernel aggregation" (SPEC §4).

The deformable sampling of DCNv3/DCNv4 (``a2d2c.ops.dcnv3_core``, one registered op) is
counted as InternImage's own FLOPs script counts it: ``5·H·W·P·C`` MAdds per layer
(``P`` sampling points, ``C`` channels, ``H×W`` output positions), SPEC §6.

What was counted depends on the path taken: at batch size 1 an ``A2D2Conv2d`` with
``impl="auto"`` runs the kernel form (one plain convolution with the aggregated kernel);
``impl="plus"`` runs K convolutions. :func:`count_madds` reports the form of every
dynamic layer it saw (``A2D2Conv2d.describe``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["MAddsReport", "count_madds", "count_params", "dynamic_layer_summary"]

# Packets counted on top of FlopCounterMode's matmul/conv formulas: 2 FLOPs per element.
_AGGREGATION_OPS = (torch.ops.aten.addcmul, torch.ops.aten.addcmul_)


def _elementwise_fma_flop(*args, out_shape=None, **kwargs) -> int:
    return 2 * math.prod(out_shape)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


@dataclass
class MAddsReport:
    """What :func:`count_madds` measured."""

    madds: int
    """Total multiply-adds of one forward pass (conv + matmul + kernel aggregation)."""
    conv_matmul_madds: int
    """Of which convolutions and matrix products."""
    aggregation_madds: int
    """Of which kernel aggregation (``addcmul``)."""
    input_shape: tuple[int, ...]
    forms: list[str] = field(default_factory=list)
    """One line per dynamic layer executed: its type and, for A²D²C, the form counted."""
    by_module: dict[str, int] = field(default_factory=dict)
    """MAdds per top-level child module."""

    def summary(self) -> str:
        """Dynamic layer types and forms, aggregated (e.g. ``16x A2D2Conv2d impl=kernel``)."""
        return dynamic_layer_summary(self.forms)


def dynamic_layer_summary(forms: Sequence[str]) -> str:
    counts = Counter(forms)
    return ", ".join(f"{n}x {f}" for f, n in counts.items()) or "no dynamic layers"


_DCN_MODULES = ("DCNv3", "DCNv4")


def _form(module: nn.Module, shape: tuple[int, ...]) -> str | None:
    name = type(module).__name__
    if name in _DCN_MODULES:  # its sampling is counted as 5·H·W·P·C (a2d2c.ops.dcn)
        return f"{name} P={module.num_points}"
    resolve = getattr(module, "resolve_impl", None)
    if callable(resolve):
        return f"{name} impl={resolve(shape)}"
    if type(module) is nn.Conv2d or not any(True for _ in module.parameters(recurse=False)):
        return None
    if "Conv" in name and hasattr(module, "num_kernels"):
        return f"{name} K={module.num_kernels}"
    return None


@torch.no_grad()
def count_madds(
    model: nn.Module,
    input_size: Sequence[int] = (3, 224, 224),
    *,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> MAddsReport:
    """Multiply-adds of one eval-mode forward pass on a random ``(B, *input_size)`` input.

    The model is put in ``eval()`` for the pass (inference is what MAdds describe:
    A²D²C then uses its ``eval_sampling``) and its training mode restored afterwards.
    ``device``/``dtype`` default to those of the model's first parameter.
    """
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (C, H, W), got {tuple(input_size)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ref = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (
        ref.device if ref is not None else torch.device("cpu"))
    dtype = dtype or (ref.dtype if ref is not None else torch.float32)
    x = torch.randn(batch_size, *input_size, device=device, dtype=dtype)

    forms: list[str] = []
    hooks = []
    for m in model.modules():
        if hasattr(m, "resolve_impl") or (hasattr(m, "num_kernels") and "Conv" in
                                          type(m).__name__) or type(m).__name__ in _DCN_MODULES:
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args: forms.append(_form(mod, tuple(args[0].shape)) or "")))
    mapping = {op: _elementwise_fma_flop for op in _AGGREGATION_OPS}
    counter = FlopCounterMode(display=False, depth=1, custom_mapping=mapping)
    was_training = model.training
    model.eval()
    try:
        with counter:
            model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()

    agg = sum(counter.get_flop_counts().get("Global", {}).get(op, 0) for op in _AGGREGATION_OPS)
    total = counter.get_total_flops()
    by_module = {}
    for mod_name, ops in counter.get_flop_counts().items():
        if mod_name != "Global" and mod_name.count(".") == 1:
            by_module[mod_name.split(".", 1)[1]] = sum(ops.values()) // 2
    return MAddsReport(
        madds=total // 2,
        conv_matmul_madds=(total - agg) // 2,
        aggregation_madds=agg // 2,
        input_shape=tuple(x.shape),
        forms=[f for f in forms if f],
        by_module=by_module,
    )
