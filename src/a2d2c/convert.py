"""Swap the ``nn.Conv2d`` modules of any network for A²D²C layers."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .layers.a2d2c import A2D2Conv2d

__all__ = ["PLACEMENTS", "convert"]

Predicate = Callable[[str, nn.Conv2d], bool]

PLACEMENTS: dict[str, Predicate] = {
    "all": lambda name, conv: True,
    "3x3": lambda name, conv: tuple(conv.kernel_size) == (3, 3),
    "3x3-dense": lambda name, conv: tuple(conv.kernel_size) == (3, 3) and conv.groups == 1,
    "1x1": lambda name, conv: tuple(conv.kernel_size) == (1, 1),
}


def convert(model: nn.Module, placement: str | Predicate = "3x3", *, noise: float = 1e-2,
            **layer_kwargs) -> nn.Module:
    """Replace the ``nn.Conv2d`` modules chosen by ``placement`` with :class:`A2D2Conv2d`.

    Args:
        model: any network; modified in place and returned.
        placement: ``"all"`` (every ``nn.Conv2d``), ``"3x3"``, ``"3x3-dense"`` (3×3 with
            ``groups == 1``), ``"1x1"``, or a predicate ``f(qualified_name, conv) -> bool``.
        noise: relative std of the symmetry-breaking noise added to each copy of the
            trained kernel (see :meth:`A2D2Conv2d.from_conv2d`); the noise sums to zero
            over the K kernels, so with uniform attention (``τ → ∞``) the converted
            network computes exactly what the original did.
        **layer_kwargs: :class:`A2D2Conv2d` keyword arguments (``num_kernels``,
            ``num_points``, ``head``, ``impl``, ...).

    How close the converted network stays: ``y = Σ_k π_k ⊙ (W + ε_k) * x = W * x +
    Σ_k (π_k - 1/K) ⊙ ε_k * x``, so the output moves by (attention's departure from
    uniform) × ``noise``. The tests measure a converted torchvision ResNet-18 at
    ``τ = 30`` (the start of the schedule) within 1e-3 relative of the original.
    """
    if isinstance(placement, str):
        if placement not in PLACEMENTS:
            raise ValueError(
                f"unknown placement {placement!r}; use one of {sorted(PLACEMENTS)} or a "
                "predicate f(name, conv) -> bool"
            )
        predicate = PLACEMENTS[placement]
    elif callable(placement):
        predicate = placement
    else:
        raise TypeError(f"placement must be a name or a callable, got {placement!r}")
    targets = [(name, m) for name, m in model.named_modules()
               if type(m) is nn.Conv2d and predicate(name, m)]
    for name, conv in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = A2D2Conv2d.from_conv2d(conv, noise=noise, **layer_kwargs)
        setattr(parent, child, layer.train(conv.training))
    return model
