"""Optimizer parameter groups with their own weight decay (norms, biases, attention).

As in torchvision's reference recipe (``--norm-weight-decay``, ``--bias-weight-decay``)
and timm (no decay on 1-d parameters), weight decay is commonly switched off for the
parameters of normalisation layers and for biases; for dynamic convolutions one may also
want it off (or different) for the attention that computes the mixing weights. Each
parameter goes to the first group that claims it:

1. ``norm``: parameters of normalisation layers (BatchNorm, GroupNorm, LayerNorm, ...,
   including DCD's latent norms), when ``norm_weight_decay`` is set;
2. ``attention``: parameters of the sub-modules of a dynamic layer other than norms
   (DynamicConv's and A²D²C's ``fc1``/``fc2``, CondConv's ``routing``, ODConv's and
   DCD's FCs), when ``attention_weight_decay`` is set; a dynamic layer's own kernel
   bank, bias and DCD's ``q``/``p`` are not attention;
3. ``bias``: any other parameter named ``bias``, when ``bias_weight_decay`` is set;
4. everything else: ``weight_decay``.

Empty groups are dropped; the groups keep the model's parameter order within them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["NORM_LAYERS", "param_groups"]

NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm,
)


def _dynamic_types() -> tuple[type[nn.Module], ...]:
    from ..layers import A2D2Conv2d, CondConv2d, DCDConv2d, DCDLinear, DynamicConv2d, ODConv2d

    return (A2D2Conv2d, CondConv2d, DCDConv2d, DCDLinear, DynamicConv2d, ODConv2d)


def _kinds(model: nn.Module) -> dict[int, str]:
    """``id(param) → "norm" | "attention" | "bias" | "other"`` (first claim wins)."""
    kinds: dict[int, str] = {}
    try:
        from torchvision.ops import FrozenBatchNorm2d

        norms = (*NORM_LAYERS, FrozenBatchNorm2d)
    except ImportError:  # pragma: no cover - torchvision is a dependency
        norms = NORM_LAYERS
    for m in model.modules():
        if isinstance(m, norms):
            for p in m.parameters(recurse=False):
                kinds.setdefault(id(p), "norm")
    for m in model.modules():
        if isinstance(m, _dynamic_types()):
            for child in m.children():
                for p in child.parameters():
                    kinds.setdefault(id(p), "attention")
    for name, p in model.named_parameters():
        kinds.setdefault(id(p), "bias" if name.rsplit(".", 1)[-1] == "bias" else "other")
    return kinds


def param_groups(model: nn.Module, weight_decay: float, *,
                 norm_weight_decay: float | None = None,
                 bias_weight_decay: float | None = None,
                 attention_weight_decay: float | None = None) -> list[dict[str, Any]]:
    """Trainable parameters of ``model`` in groups ``{"params", "weight_decay", "name"}``.

    A ``None`` decay leaves that kind with the rule below it (finally ``weight_decay``).
    """
    kinds = _kinds(model)
    decay = {"norm": norm_weight_decay, "attention": attention_weight_decay,
             "bias": bias_weight_decay, "other": weight_decay}
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kind = kinds[id(p)]
        if decay[kind] is None and kind == "attention":  # attention → bias rule → default
            kind = "bias" if name.rsplit(".", 1)[-1] == "bias" else "other"
        if decay[kind] is None:
            kind = "other"
        groups.setdefault(kind, []).append(p)
    return [{"params": ps, "weight_decay": float(decay[k]), "name": k}
            for k, ps in groups.items()]
