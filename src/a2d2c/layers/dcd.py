"""DCD: dynamic convolution decomposition (Li et al., ICLR 2021).

"Revisiting Dynamic Convolution via Matrix Decomposition" writes the dynamic kernel as

    W(x) = Λ(x) · W0 + P · Φ(x) · Qᵀ

with ``W0`` a static kernel, ``Λ(x)`` a dynamic diagonal (channel-wise) attention over the
``O`` output channels, and the *dynamic channel fusion* ``P Φ(x) Qᵀ``: ``Qᵀ`` compresses
the ``C`` input channels to a latent space of dimension ``L``, the dynamic ``L×L`` matrix
``Φ(x)`` fuses them, and ``P`` expands to the ``O`` outputs.

**k×k convolutions.** As in the authors' code for ResNet, the dynamic residual ``P Φ Qᵀ``
is a ``1×1`` term placed at the kernel's *centre tap* (``⌊(kh-1)/2⌋, ⌊(kw-1)/2⌋``): the
paper's "sparse" extension, so ``Q`` and ``P`` cost ``C·L + L·O`` parameters whatever the
kernel size. Per sample,

    W(x)[o, c, i, j] = Λ(x)[o]·W0[o, c, i, j] + [i, j = centre]·(P (I + Φ̃(x)) Qᵀ)[o, c].

**Φ.** As in the authors' code, ``Φ(x) = I + Φ̃(x)`` with ``Φ̃(x)`` the output of a linear
head (so ``P Qᵀ`` is a static low-rank part and the head learns the dynamic change).

**Attention** (the authors' code): ``y = AdaptiveAvgPool_{p×p}(x)`` (``p = pool_size``;
1 in the paper and for ResNet-50, 2 for their ResNet-18), ``s = FC(y)`` (``p²C → h``, no
bias), an SE gate ``s ← s · hsig(FC_se(s))`` (``h → h``, no bias), then
``Φ̃ = FC_φ(s)`` (``h → L²``) and ``Λ = hsig(FC_λ(s))`` (``h → O``), with
``hsig(z) = relu6(z + 3)/3 ∈ [0, 2]`` and ``h = max(int(max(p²C, L²)·r), min_hidden)``.

**Normalisation** (``latent_norm``). The authors' code normalises the latent space twice:
``z = BN₁(Qᵀ x_c)`` and ``u = BN₂(Φ̃ z) + z`` (so ``Φ = I + Φ̃`` with the identity path
left unnormalised), then ``P u``. Without any normalisation the layer does not train:
``Φ̃ z`` is quadratic in the weights and the input, and SGD at the usual learning rates
diverges within a few steps (measured: non-finite loss by step 5 of a ResNet-18 at lr 0.1).

* ``"layer"`` (the default): the same two places, each a ``GroupNorm(1, L)`` — per sample,
  over the whole latent map. It works at batch size 1, computes the same function in
  training and eval, and keeps ``W(x)`` a per-sample kernel (the statistics are per-sample
  scalars: a per-sample scale of the latent path plus a per-sample bias). The authors'
  BatchNorm allows none of that in training, so, as for every layer of this package, the
  original normalisation is replaced where it would break batch size 1.
* ``"batch"``: the authors' BatchNorms exactly (``BatchNorm2d(L)`` over the
  ``(B, L, H', W')`` latent map, equal to their ``BatchNorm1d`` over ``(B, L, H'·W')``). In
  training a sample's output then depends on its batch, and a layer cannot train on one
  latent value per channel (batch 1 with a 1×1 output). Measured on Fashion-MNIST
  (README, study 1): it trains less well than ``"layer"``, and in eval its running
  statistics let unusual inputs grow quadratically from layer to layer (non-finite
  logits for a few test images).
* ``"none"``: ``u = (I + Φ̃) z``, the unnormalised per-sample kernel — for analysis, not
  for training from scratch.

Each norm has ``2L`` affine parameters, ``4L`` per layer with ``"layer"`` or ``"batch"``.

**Computation** (exact, no per-sample loop): ``y = Λ ⊙ (conv(x, W0) + b) + P u`` with
``z = N₁(Qᵀ x_c)`` and ``u = N₂(Φ̃ z) + z`` (``N`` the latent norms), where ``x_c`` is the
input under the centre tap of every output position (a strided slice) and ``Φ̃ z`` a
batched matrix product in the latent space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import check_input_dtype, check_positive_int
from ._dynamic_functional import (
    DynamicConvBase,
    attention_dtype,
    check_ratio,
    hard_sigmoid,
    init_like_conv2d,
    linear,
)

__all__ = ["LATENT_NORMS", "LATENT_RULES", "DCDConv2d", "DCDLinear", "dcd_latent_dim"]

LATENT_RULES = ("paper", "sqrt")
#: ``latent_norm`` choices: per-sample GroupNorm(1, L) (default), the authors' BatchNorms, none
LATENT_NORMS = ("batch", "layer", "none")


def dcd_latent_dim(in_channels: int, rule: str | int = "paper", pool_size: int = 1) -> int:
    """The latent dimension ``L`` of a DCD layer.

    ``"paper"``: ``L = ⌊C / 2^⌊log₂ √C⌋⌋`` (the paper, §3.2); ``"sqrt"``: ``L = ⌊√(p²·C)⌋``
    with ``p = pool_size`` (the authors' code: ``⌊√(4C)⌋`` in their ResNet-18,
    ``⌊√C⌋`` in their ResNet-50); an int is used as it is.
    """
    if isinstance(rule, bool):
        raise TypeError(f"latent_dim must be an int or one of {LATENT_RULES}, got {rule!r}")
    if isinstance(rule, int):
        return check_positive_int(rule, "latent_dim", "L")
    if rule == "paper":
        return max(in_channels // 2 ** math.floor(math.log2(math.sqrt(in_channels))), 1)
    if rule == "sqrt":
        return max(math.isqrt(pool_size * pool_size * in_channels), 1)
    raise ValueError(f"latent_dim must be an int >= 1 or one of {LATENT_RULES}, got {rule!r}")


def _dcd_heads(layer: nn.Module, y: Tensor) -> tuple[Tensor, Tensor]:
    """The DCD attention on a descriptor ``y`` (B, d): ``(Λ (B, O), Φ̃ (B, L, L))``.

    ``s = FC(y)``, ``s ← s·hsig(FC_se(s))``, ``Φ̃ = FC_φ(s)``, ``Λ = hsig(FC_λ(s))``; the
    layer provides ``fc, fc_se, fc_phi, fc_scale`` and ``latent_dim``.
    """
    n_lat = layer.latent_dim
    s = linear(layer.fc, y)
    s = s * hard_sigmoid(linear(layer.fc_se, s))
    phi = linear(layer.fc_phi, s).view(y.shape[0], n_lat, n_lat)
    return hard_sigmoid(linear(layer.fc_scale, s)), phi


def _check_latent_norm(latent_norm: str) -> str:
    if latent_norm not in LATENT_NORMS:
        raise ValueError(f"latent_norm must be one of {LATENT_NORMS}, got {latent_norm!r}")
    return latent_norm


def _latent_norm_layer(kind: str, n_lat: int, batch_norm: type[nn.Module],
                       factory: dict[str, Any]) -> nn.Module | None:
    """``"batch"``: the authors' BatchNorm; ``"layer"``: ``GroupNorm(1, L)``, per sample over
    the whole latent map (batch-independent, the same in training and eval)."""
    if kind == "batch":
        return batch_norm(n_lat, **factory)
    if kind == "layer":
        return nn.GroupNorm(1, n_lat, **factory)
    return None


def _init_decomposition(layer: nn.Module, in_dim: int, out_dim: int, descriptor_dim: int,
                        latent_norm: str, batch_norm: type[nn.Module],
                        factory: dict[str, Any]) -> None:
    """The parts DCDConv2d and DCDLinear share, on ``layer`` (which has ``latent_dim`` and
    ``hidden_channels``): ``q (L, C)``, ``p (O, L)``, the latent norms and the attention FCs
    (``descriptor_dim → h``, SE ``h → h``, ``h → L²``, ``h → O``; no bias)."""
    n_lat, h = layer.latent_dim, layer.hidden_channels
    layer.q = nn.Parameter(torch.empty(n_lat, in_dim, **factory))
    layer.p = nn.Parameter(torch.empty(out_dim, n_lat, **factory))
    layer.latent_norm = _check_latent_norm(latent_norm)
    layer.norm_q = _latent_norm_layer(latent_norm, n_lat, batch_norm, factory)
    layer.norm_phi = _latent_norm_layer(latent_norm, n_lat, batch_norm, factory)
    layer.fc = nn.Linear(descriptor_dim, h, bias=False, **factory)
    layer.fc_se = nn.Linear(h, h, bias=False, **factory)
    layer.fc_phi = nn.Linear(h, n_lat * n_lat, bias=False, **factory)
    layer.fc_scale = nn.Linear(h, out_dim, bias=False, **factory)


def _reset_decomposition(layer: nn.Module) -> None:
    """``Qᵀ``, ``P`` like ``1×1`` convs, the FCs like ``nn.Linear``, norms to identity."""
    init_like_conv2d(layer.q[:, :, None, None], None)
    init_like_conv2d(layer.p[:, :, None, None], None)
    for m in (layer.fc, layer.fc_se, layer.fc_phi, layer.fc_scale, layer.norm_q,
              layer.norm_phi):
        if m is not None:
            m.reset_parameters()


def _check_batch_stats(layer: nn.Module, values_per_channel: int) -> None:
    """BatchNorm in training needs more than one value per latent channel: say so clearly."""
    if (layer.training and isinstance(layer.norm_q, nn.modules.batchnorm._BatchNorm)
            and values_per_channel == 1):  # 0 (an empty batch) passes, as in BatchNorm
        raise ValueError(
            f"{type(layer).__name__} with latent_norm='batch' (the authors' latent BatchNorms) "
            "cannot train on one latent value per channel (batch size 1 with a 1x1 output): "
            "use a batch of 2 or more, eval mode, or latent_norm='none'")


def _latent_fusion(layer: nn.Module, phi: Tensor, z: Tensor) -> Tensor:
    """``u = BN₂(Φ̃ z) + z`` with ``z = BN₁(z)`` (or ``(I + Φ̃) z`` without the norms).

    ``z``: ``(B, L, *spatial)``; the norms are ``BatchNorm2d`` (conv) or ``BatchNorm1d``
    (linear) and see ``z`` in its own shape."""
    if layer.norm_q is not None:
        z = layer.norm_q(z)
    b = z.shape[0]
    # the spatial size spelled out (not -1), so that an empty batch (B = 0) reshapes too
    u = torch.bmm(phi.to(z.dtype), z.reshape(b, layer.latent_dim, math.prod(z.shape[2:])))
    u = u.view_as(z)
    if layer.norm_phi is not None:
        u = layer.norm_phi(u)
    return u + z


class DCDConv2d(DynamicConvBase):
    """Dynamic convolution decomposition, a drop-in for :class:`nn.Conv2d` (``groups=1``).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias,
        padding_mode: as in :class:`torch.nn.Conv2d`. ``groups`` must be 1: the dynamic
            channel fusion mixes all input channels.
        latent_dim: ``L``, an int or a rule of :func:`dcd_latent_dim` (``"paper"``,
            ``"sqrt"``).
        pool_size: ``p``, the attention pools the input to ``p×p`` (1 or 2 in the
            authors' models).
        reduction: ``r``, ``h = max(int(max(p²C, L²)·r), min_hidden)``.
        min_hidden: 4 in the authors' code.
        num_kernels: accepted for the factory's common interface; DCD has one static
            kernel, so it must be 1.
        latent_norm: ``"layer"`` (default): two per-sample ``GroupNorm(1, L)`` where the
            authors have BatchNorms (batch size 1 works); ``"batch"``: the authors' two
            latent BatchNorms; ``"none"``: neither (does not train from scratch at usual
            learning rates). See the module docstring.

    Attributes:
        weight: ``(O, C, kh, kw)``, the static ``W0``; bias: ``(O,)`` or ``None``, part of
            the static filter and scaled by ``Λ`` with it (the authors' layers have none).
        q: ``(L, C)``, ``Qᵀ``; p: ``(O, L)``, ``P``.
        norm_q, norm_phi: the latent norms after ``Qᵀ`` and after ``Φ̃``: ``GroupNorm(1, L)``,
            ``BatchNorm2d(L)`` or ``None``.
        fc ``(p²C → h)``, fc_se ``(h → h)``, fc_phi ``(h → L²)``, fc_scale ``(h → O)``,
        all without bias.

    Parameters: ``O·C·kh·kw + O·[bias] + L·C + O·L + 4L·[norm] + p²C·h + h² + h·L² + h·O``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        num_kernels: int = 1,
        latent_dim: int | str = "paper",
        pool_size: int = 1,
        reduction: float = 0.0625,
        min_hidden: int = 4,
        latent_norm: str = "layer",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        g = self._init_geometry(in_channels, out_channels, kernel_size, stride, padding,
                                dilation, groups, padding_mode)
        if groups != 1:
            raise ValueError(f"DCDConv2d supports groups=1 only (the dynamic channel fusion "
                             f"mixes all input channels), got groups={groups}")
        check_positive_int(num_kernels, "num_kernels", "K")
        if num_kernels != 1:
            raise ValueError(f"DCDConv2d has one static kernel W0 and a dynamic residual, so "
                             f"num_kernels (K) must be 1, got {num_kernels}")
        self.num_kernels = 1
        self.pool_size = check_positive_int(pool_size, "pool_size")
        self.latent_dim = dcd_latent_dim(in_channels, latent_dim, self.pool_size)
        self.latent_rule = latent_dim
        self.reduction = check_ratio(reduction, "reduction")
        self.min_hidden = check_positive_int(min_hidden, "min_hidden")
        pooled = self.pool_size * self.pool_size * in_channels
        n_lat = self.latent_dim
        self.hidden_channels = max(int(max(pooled, n_lat * n_lat) * self.reduction),
                                   self.min_hidden)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *g.kernel_size,
                                               **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        _init_decomposition(self, in_channels, out_channels, pooled, latent_norm,
                            nn.BatchNorm2d, factory)
        self.centre = ((g.kernel_size[0] - 1) // 2, (g.kernel_size[1] - 1) // 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``W0`` like ``nn.Conv2d``, ``Qᵀ``, ``P`` like ``1×1`` convs, FCs like ``nn.Linear``."""
        init_like_conv2d(self.weight, self.bias)
        _reset_decomposition(self)

    def extra_repr(self) -> str:
        return (self._geometry_repr(self.bias is not None)
                + f", L={self.latent_dim}, pool={self.pool_size}, hidden={self.hidden_channels}"
                + f", latent_norm={self.latent_norm}")

    def attention(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(Λ, Φ̃)`` for input ``x``: ``(B, O)`` and ``(B, L, L)`` (``Φ = I + Φ̃``)."""
        acc = attention_dtype(self.weight)
        with torch.autocast(x.device.type, enabled=False):
            y = F.adaptive_avg_pool2d(x.to(acc), self.pool_size).reshape(x.shape[0], -1)
            return _dcd_heads(self, y)

    def _centre_input(self, x: Tensor, pad: tuple[int, int], ho: int, wo: int) -> Tensor:
        """The input under the kernel's centre tap at every output position: (B, C, H', W')."""
        (sh, sw), (dh, dw), (ph, pw) = self.stride, self.dilation, pad
        top, left = self.centre[0] * dh - ph, self.centre[1] * dw - pw
        h, w = x.shape[2:]
        if top < 0 or left < 0 or top + (ho - 1) * sh >= h or left + (wo - 1) * sw >= w:
            x = F.pad(x, (pw, pw, ph, ph))
            top, left = top + ph, left + pw
        return x[:, :, top: top + (ho - 1) * sh + 1: sh, left: left + (wo - 1) * sw + 1: sw]

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.shape[0] == 0:
            return self._empty_forward(x)
        scale, phi = self.attention(x)
        x, pad = self.geometry.pad_input(x)
        y = F.conv2d(x, self.weight, self.bias, self.stride, pad, self.dilation)
        b, _, ho, wo = y.shape
        _check_batch_stats(self, b * ho * wo)
        y = y * scale.to(y.dtype)[:, :, None, None]
        z = F.conv2d(self._centre_input(x, pad, ho, wo), self.q[:, :, None, None])
        return y + F.conv2d(_latent_fusion(self, phi, z), self.p[:, :, None, None])


class DCDLinear(nn.Module):
    """DCD applied to a fully connected layer: the authors' dynamic classifier ("DYCls").

    ``W(x) = Λ(x)·W0 + P·Φ(x)·Qᵀ`` as in :class:`DCDConv2d`, on a vector input:
    ``y = Λ(x) ⊙ (W0 x + b) + P (I + Φ̃(x)) Qᵀ x``, the attention computed from ``x``
    itself (``FC: C → h``, SE gate, ``FC_φ: h → L²``, ``FC_λ: h → O``), and the latent
    fusion ``u = N₂(Φ̃ z) + z``, ``z = N₁(Qᵀ x)`` (the authors' code: two ``BatchNorm1d(L)``;
    without any norm this classifier's logits are quadratic in the features and training
    diverges at once). The published DCD ResNet-18 count (14.70M) includes this classifier
    (``L = h = 32``). ``latent_norm="batch"`` needs a batch of 2 or more in training.

    Args:
        in_features, out_features, bias: as in :class:`torch.nn.Linear`.
        latent_dim: ``L`` (32 in the authors' code).
        hidden: ``h``, the attention's width (32 in the authors' code).
        latent_norm: ``"layer"`` (default, ``GroupNorm(1, L)`` = a LayerNorm over the ``L``
            latent values), ``"batch"`` (the authors') or ``"none"``, as in
            :class:`DCDConv2d`.

    Parameters: ``O·C + O·[bias] + L·C + O·L + 4L·[norm] + C·h + h² + h·L² + h·O``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        latent_dim: int = 32,
        hidden: int = 32,
        latent_norm: str = "layer",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self.latent_dim = check_positive_int(latent_dim, "latent_dim", "L")
        self.hidden_channels = check_positive_int(hidden, "hidden")
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        _init_decomposition(self, in_features, out_features, in_features, latent_norm,
                            nn.BatchNorm1d, factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``W0``, ``b``, ``Qᵀ``, ``P`` and the FCs like ``nn.Linear``."""
        init_like_conv2d(self.weight[:, :, None, None], self.bias)
        _reset_decomposition(self)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, L={self.latent_dim}, hidden={self.hidden_channels}"
                f", latent_norm={self.latent_norm}")

    def attention(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(Λ, Φ̃)`` for input ``x`` (B, C): ``(B, O)`` and ``(B, L, L)`` (``Φ = I + Φ̃``)."""
        acc = attention_dtype(self.weight)
        with torch.autocast(x.device.type, enabled=False):
            return _dcd_heads(self, x.to(acc))

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.in_features:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"DCDLinear expects input of shape (B, {self.in_features}), "
                             f"got {shape}")
        check_input_dtype(x, self.weight.dtype, "DCDLinear")
        scale, phi = self.attention(x)
        _check_batch_stats(self, x.shape[0])
        y = F.linear(x, self.weight, self.bias) * scale.to(x.dtype)
        return y + F.linear(_latent_fusion(self, phi, F.linear(x, self.q)), self.p)
