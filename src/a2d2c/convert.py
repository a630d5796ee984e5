"""Swap the ``nn.Conv2d`` modules of any network for dynamic convolutions of any type."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .layers.factory import create_conv2d
from .layers.transfer import init_from_static
from .models._placement import BUILDER_ONLY, PLACEMENTS, infer_sites

__all__ = ["PLACEMENTS", "convert"]

Predicate = Callable[[str, nn.Conv2d], bool]


def convert(model: nn.Module, placement: str | Predicate = "3x3", *, conv: str = "a2d2c",
            noise: float = 1e-2, **layer_kwargs) -> nn.Module:
    """Replace the ``nn.Conv2d`` modules chosen by ``placement`` with ``conv`` layers.

    Args:
        model: any network; modified in place and returned.
        placement: a name of :data:`a2d2c.PLACEMENTS` — the table the model builders use
            (``"3x3"``, ``"3x3-dense"``, ``"1x1"``, ``"every"``, ``"all"`` = the 3×3 convs
            of the blocks, ``"no-stem"``, ``"pointwise"``, ``"initial"``, ...; roles are
            inferred as in :func:`a2d2c.models._placement.infer_sites`) — or a predicate
            ``f(qualified_name, conv) -> bool``.
        conv: a conv-factory name (``a2d2c.list_conv_layers()``): ``"a2d2c"``,
            ``"a2d2c+"``, ``"condconv"``, ``"dynamicconv"``, ``"odconv"``, ``"dcd"``, ...
        noise: relative std of the symmetry-breaking noise between the K copies of the
            trained kernel; every type starts as the trained convolution by the rule of
            :func:`a2d2c.layers.transfer.init_from_static`.
        **layer_kwargs: keyword arguments of the layer (``num_kernels``, ``num_points``,
            ``head``, ``impl``, ...).

    How close the converted network stays (A²D²C): ``y = Σ_k π_k ⊙ (W + ε_k) * x = W * x +
    Σ_k (π_k - 1/K) ⊙ ε_k * x``, so the output moves by (attention's departure from
    uniform) × ``noise``. The tests measure a converted torchvision ResNet-18 at
    ``τ = 30`` (the start of the schedule) within 1e-3 relative of the original.
    """
    sites = infer_sites(model)
    if isinstance(placement, str):
        if placement not in PLACEMENTS:
            raise ValueError(
                f"unknown placement {placement!r}; use one of {sorted(PLACEMENTS)} or a "
                "predicate f(name, conv) -> bool"
            )
        if placement in BUILDER_ONLY:
            raise ValueError(f"placement {placement!r} needs a backbone built by "
                             "a2d2c.create_model; on another network use a predicate")
        rule = PLACEMENTS[placement]
        targets = [(s.name, m) for s, m in sites if rule(s, "resnet")]
    elif callable(placement):
        targets = [(s.name, m) for s, m in sites if placement(s.name, m)]
    else:
        raise TypeError(f"placement must be a name or a callable, got {placement!r}")
    for name, old in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        kwargs = dict(layer_kwargs)
        if old.padding_mode != "zeros":
            kwargs["padding_mode"] = old.padding_mode
        layer = create_conv2d(conv, old.in_channels, old.out_channels, old.kernel_size,
                              old.stride, old.padding, old.dilation, old.groups,
                              old.bias is not None, **kwargs)
        layer = layer.to(device=old.weight.device, dtype=old.weight.dtype)
        init_from_static(layer, old.weight, old.bias, noise=noise)
        setattr(parent, child, layer.train(old.training))
    return model
