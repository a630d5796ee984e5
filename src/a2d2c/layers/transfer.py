"""Trained static weights into dynamic layers: the one transfer rule for every conv type.

A dynamic layer built from a trained ``nn.Conv2d`` (weight ``W``, bias ``b``) should start
as that convolution: fine-tuning then begins from the static network's function, and the
dynamic parts learn a departure from it. :func:`init_from_static` writes ``W`` and ``b``
into a freshly built layer of any type of this package, by this rule (``ε_k`` is Gaussian
noise of std ``noise·std(W)``, re-centred so that ``Σ_k ε_k = 0``; it breaks the symmetry
between kernels, which would otherwise get identical gradients forever):

========================  =============================================  ===================
layer                     what is written                                equals the static
                                                                         conv
========================  =============================================  ===================
A2D2Conv2d (both forms),  ``W_k = W + ε_k``, ``b_k = b``; attention       at uniform
DynamicConv2d             untouched                                      attention
                                                                         (``τ → ∞``)
CondConv2d                ``W_k = (2/K)(W + ε_k)``, ``b_k = (2/K) b``;    always (the routing
                          routing weight and bias zero, so every         is constant until
                          ``r_k = sigmoid(0) = 1/2``                      it learns)
ODConv2d                  channel/filter/spatial heads zero (each        at uniform kernel
                          attention exactly ``1/2`` at any ``τ``);        attention
                          ``W_k = 2^n (W + ε_k)`` with ``n`` the number  (``τ → ∞``; always
                          of those heads present, ``b_k = 2^f b``        when ``K = 1``)
                          (``f = 1`` with a filter head); kernel head
                          untouched
DCDConv2d, DCDLinear      ``W0 = W``, ``b``; ``FC_λ`` zero (``Λ =         always
                          hsig(0) = 1``), ``P = 0`` (the dynamic
                          residual ``P Φ Qᵀ`` starts at zero)
``nn.Conv2d``/``Linear``  copied                                         always
========================  =============================================  ===================

Why the output stays close at a finite ``τ`` (the schedule starts at 30): with mixing
weights ``π_k`` that sum to one, ``Σ_k π_k (W + ε_k) = W + Σ_k (π_k − 1/K) ε_k``, so the
deviation is the attention's departure from uniform times the (small) noise.

:meth:`A2D2Conv2d.from_conv2d` and :func:`a2d2c.convert` use this rule; so does
``a2d2c.create_model(..., pretrained=...)`` for every dynamic model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["init_from_static", "zero_sum_noise"]


def zero_sum_noise(num_kernels: int, weight: Tensor, noise: float,
                   generator: torch.Generator | None = None) -> Tensor:
    """``(K, *weight.shape)`` noise of std ``noise·std(weight)`` summing to zero over ``K``.

    ``K = 1`` (nothing to break) or ``noise = 0`` gives zeros. Drawn from ``generator``
    (default: the global RNG).
    """
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    eps = torch.randn((num_kernels, *weight.shape), generator=generator, dtype=weight.dtype,
                      device="cpu" if generator is not None else weight.device)
    eps = eps.to(weight.device)
    if num_kernels == 1 or noise == 0:
        return eps.zero_()
    eps -= eps.mean(0, keepdim=True)
    std = weight.std() if weight.numel() > 1 else weight.abs().mean()
    return eps * (noise * std)


def _check_bias(layer: nn.Module, bias: Tensor | None) -> None:
    if bias is not None and layer.bias is None:
        raise ValueError(f"the static layer has a bias but the {type(layer).__name__} was built "
                         "with bias=False; build it with bias=True")


def _bank(layer: nn.Module, weight: Tensor, bias: Tensor | None, noise: float,
          generator: torch.Generator | None, scale: float = 1.0,
          bias_scale: float | None = None) -> None:
    """``W_k = scale·(W + ε_k)``, ``b_k = bias_scale·b`` (zero without a static bias)."""
    k = layer.weight.shape[0]
    w = weight.to(layer.weight)
    if tuple(layer.weight.shape[1:]) != tuple(w.shape):
        raise ValueError(f"{type(layer).__name__} kernels have shape "
                         f"{tuple(layer.weight.shape[1:])}, the static weight "
                         f"{tuple(w.shape)}")
    _check_bias(layer, bias)
    layer.weight.copy_(scale * (w.unsqueeze(0) + zero_sum_noise(k, w, noise, generator)))
    if layer.bias is not None:
        b = torch.zeros(layer.bias.shape[-1]) if bias is None else bias
        layer.bias.copy_((scale if bias_scale is None else bias_scale)
                         * b.to(layer.bias).expand_as(layer.bias))


def _zero(*modules: nn.Module | None) -> None:
    for m in modules:
        if m is not None:
            nn.init.zeros_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _a2d2c_like(layer: nn.Module, weight: Tensor, bias: Tensor | None, noise: float,
                generator: torch.Generator | None) -> None:
    _bank(layer, weight, bias, noise, generator)


def _condconv(layer: nn.Module, weight: Tensor, bias: Tensor | None, noise: float,
              generator: torch.Generator | None) -> None:
    _zero(layer.routing)  # r_k = sigmoid(0) = 1/2 for every input
    _bank(layer, weight, bias, noise, generator, scale=2.0 / layer.num_kernels)


def _odconv(layer: nn.Module, weight: Tensor, bias: Tensor | None, noise: float,
            generator: torch.Generator | None) -> None:
    heads = [layer.channel_fc, layer.filter_fc, layer.spatial_fc]
    _zero(*heads)  # each present sigmoid attention is exactly 1/2, whatever τ
    n = sum(h is not None for h in heads)
    _bank(layer, weight, bias, noise, generator, scale=2.0 ** n,
          bias_scale=2.0 if layer.filter_fc is not None else 1.0)


def _dcd(layer: nn.Module, weight: Tensor, bias: Tensor | None, noise: float,
         generator: torch.Generator | None) -> None:
    w = weight.to(layer.weight)
    if w.shape != layer.weight.shape:
        raise ValueError(f"{type(layer).__name__} weight has shape {tuple(layer.weight.shape)}, "
                         f"the static weight {tuple(w.shape)}")
    _check_bias(layer, bias)
    layer.weight.copy_(w)
    if layer.bias is not None:
        layer.bias.copy_(torch.zeros_like(layer.bias) if bias is None else bias.to(layer.bias))
    nn.init.zeros_(layer.fc_scale.weight)  # Λ = hsig(0) = 1
    nn.init.zeros_(layer.p)  # the dynamic residual P Φ Qᵀ starts at zero


def _plain(layer: nn.Module, weight: Tensor, bias: Tensor | None, noise: float,
           generator: torch.Generator | None) -> None:
    if layer.weight.shape != weight.shape:
        raise ValueError(f"{type(layer).__name__} weight has shape {tuple(layer.weight.shape)}, "
                         f"the static weight {tuple(weight.shape)}")
    _check_bias(layer, bias)
    layer.weight.copy_(weight)
    if layer.bias is not None:
        layer.bias.copy_(torch.zeros_like(layer.bias) if bias is None else bias)


def _rules() -> dict[type, Callable[..., None]]:
    from .a2d2c import A2D2Conv2d
    from .condconv import CondConv2d
    from .dcd import DCDConv2d, DCDLinear
    from .dynamicconv import DynamicConv2d
    from .odconv import ODConv2d

    return {A2D2Conv2d: _a2d2c_like, DynamicConv2d: _a2d2c_like, CondConv2d: _condconv,
            ODConv2d: _odconv, DCDConv2d: _dcd, DCDLinear: _dcd, nn.Conv2d: _plain,
            nn.Linear: _plain}


@torch.no_grad()
def init_from_static(layer: nn.Module, weight: Tensor, bias: Tensor | None = None, *,
                     noise: float = 1e-2, generator: torch.Generator | None = None
                     ) -> nn.Module:
    """Write a trained static conv's ``weight`` (``(O, C/g, kh, kw)``) and ``bias`` into
    ``layer`` by the rule of the module docstring; returns ``layer``.

    ``layer`` is a dynamic layer of this package (or ``nn.Conv2d``/``nn.Linear``, or a
    pooled 1×1 dynamic classifier); a linear layer's ``(O, C)`` weight is accepted for
    a 1×1 dynamic classifier and vice versa. Parameters the rule does not name keep the
    layer's own initialisation.
    """
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a Tensor, got {type(weight).__name__}")
    if not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise}")
    inner = getattr(layer, "conv", None)
    if isinstance(inner, nn.Module) and not isinstance(layer, nn.Conv2d) and hasattr(
            inner, "weight"):  # PooledConvClassifier: a 1×1 dynamic conv on pooled features
        layer = inner
    rule = _rules().get(type(layer))
    if rule is None:
        for cls, fn in _rules().items():
            if isinstance(layer, cls):
                rule = fn
                break
    if rule is None:
        raise TypeError(f"no static-weight transfer rule for {type(layer).__name__}; "
                        "supported: " + ", ".join(c.__name__ for c in _rules()))
    target = layer.weight
    target_kernel = target.shape[1:] if target.dim() == 5 else target.shape
    if weight.dim() == 2 and len(target_kernel) == 4:  # Linear (O, C) → 1×1 conv
        weight = weight[:, :, None, None]
    elif weight.dim() == 4 and len(target_kernel) == 2 and weight.shape[2:] == (1, 1):
        weight = weight[:, :, 0, 0]  # 1×1 conv → linear
    rule(layer, weight.detach(), None if bias is None else bias.detach(), noise, generator)
    return layer
