"""ODConv: omni-dimensional dynamic convolution (Li et al., ICLR 2022).

One bottleneck ``s = ReLU(FC(GAP(x)))`` (``C → h``, ``h = max(int(C·r), min_hidden)``,
``r = 1/16``, at least 16) feeds four heads:

* channel (input-channel) attention ``α_c = sigmoid(FC_c(s)/τ) ∈ (0,1)^C``,
* filter (output-channel) attention ``α_f = sigmoid(FC_f(s)/τ) ∈ (0,1)^O``,
* spatial attention ``α_s = sigmoid(FC_s(s)/τ) ∈ (0,1)^{kh·kw}``,
* kernel attention ``α_w = softmax(FC_w(s)/τ)`` over the ``K`` kernels,

and the per-sample kernel is ``W̃[b] = Σ_k α_w[b,k] · α_f[b] ⊙ α_c[b] ⊙ α_s[b] ⊙ W_k``
(each attention broadcast along its own dimension of ``W_k ∈ R^{O×C/g×kh×kw}``).
As in the official code, a head is left out (its attention is 1) where it is redundant:
the kernel head when ``K = 1``, the spatial head for ``1×1`` kernels, the filter head for
depthwise convolutions (``C = O = groups``), which keeps the published parameter counts.

Computation: :func:`a2d2c.ops.mixed_conv2d` with coefficients ``α_w`` (``(B, K)``),
``tap_scale = α_s`` (``(B, kh, kw)``: the coefficient ``α_w[b,k]·α_s[b,i,j]`` kept
factored), ``in_scale = α_c`` and ``out_scale = α_f``. The kernel and unfold paths fold
the scales into the per-sample kernel, which they recompute in backward instead of saving
it (the official code keeps ``B`` full kernels per layer alive for backward); the plus
form is exact at every kernel size (the spatial attention scales the input's im2col
columns per tap; on small maps 3× faster than the kernel form, measured). The bias is
``α_f[b,o]·Σ_k α_w[b,k]·b_k[o]``, passed per sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.mixed_conv import IMPLS, mixed_conv2d
from ._base import TemperatureMixin, check_choice, check_positive_int
from ._dynamic_functional import (
    DynamicConvBase,
    MixedConvDispatch,
    attention_dtype,
    check_ratio,
    init_like_conv2d,
    linear,
)

__all__ = ["ODConv2d"]


class ODConv2d(MixedConvDispatch, TemperatureMixin, DynamicConvBase):
    """Omni-dimensional dynamic convolution, a drop-in for :class:`nn.Conv2d`.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
        padding_mode: as in :class:`torch.nn.Conv2d`.
        num_kernels: ``K`` ("ODConv (1x)" is ``K = 1``, "(4x)" is ``K = 4``).
        reduction: ``r`` of the bottleneck, ``h = max(int(C·r), min_hidden)``.
        min_hidden: the bottleneck's minimum width (16 in the paper).
        temperature: initial ``τ`` (a buffer), dividing the logits of all four heads as
            in the official implementation; at ``τ = 1`` it has no effect.
        impl: the path of :func:`a2d2c.ops.mixed_conv2d` (``"auto"``, ``"kernel"``,
            ``"unfold"``, ``"plus"``, ``"triton"``, and ``"triton_plus"`` for ``1×1``
            kernels); all exact.

    Attributes:
        weight: ``(K, O, C/groups, kh, kw)``; bias: ``(K, O)`` or ``None``. The bias of
            a filter is scaled with it (``Σ_k α_w[b,k]·α_f[b,o]·b_k[o]``); the paper's
            layers have none.
        fc: ``nn.Linear(C, h)``; channel_fc ``(h → C)``, filter_fc ``(h → O)`` or
            ``None``, spatial_fc ``(h → kh·kw)`` or ``None``, kernel_fc ``(h → K)`` or
            ``None``.

    Parameters: ``K·O·(C/g)·kh·kw + K·O·[bias] + (C·h + h) + (h·C + C) + (h·O + O)·[not
    depthwise] + (h·kh·kw + kh·kw)·[kh·kw > 1] + (h·K + K)·[K > 1]``.

    Normalisation: the official attention is ``FC (no bias) → BatchNorm → ReLU`` on a
    ``(B, h, 1, 1)`` tensor, which cannot be trained with batch size 1. Here the first FC
    has a bias and there is no normalisation (``h`` parameters instead of BatchNorm's
    ``2h``; the difference is under 0.001% of a ResNet-18). Batch size 1 works.
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
        num_kernels: int = 4,
        reduction: float = 0.0625,
        min_hidden: int = 16,
        temperature: float = 1.0,
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        g = self._init_geometry(in_channels, out_channels, kernel_size, stride, padding,
                                dilation, groups, padding_mode)
        self.reduction = check_ratio(reduction, "reduction")
        self.min_hidden = check_positive_int(min_hidden, "min_hidden")
        self._init_temperature(temperature, device)
        self.impl = check_choice(impl, "impl", IMPLS)
        factory = {"device": device, "dtype": dtype}
        self._init_kernel_bank(num_kernels, bias, factory)
        h = self.hidden_channels = max(int(in_channels * self.reduction), self.min_hidden)
        taps = g.kernel_size[0] * g.kernel_size[1]
        if impl == "triton_plus" and taps > 1:
            raise ValueError(
                f"impl={impl!r} is exact for ODConv only with 1x1 kernels (its spatial attention "
                f"depends on the tap), got kernel_size={g.kernel_size}; use 'auto', 'plus' "
                f"(which scales its input columns per tap) or 'kernel'")
        depthwise = in_channels == groups == out_channels
        self.fc = nn.Linear(in_channels, h, **factory)
        self.channel_fc = nn.Linear(h, in_channels, **factory)
        self.filter_fc = None if depthwise else nn.Linear(h, out_channels, **factory)
        self.spatial_fc = None if taps == 1 else nn.Linear(h, taps, **factory)
        self.kernel_fc = None if num_kernels == 1 else nn.Linear(h, num_kernels, **factory)
        self.reset_parameters()

    def _tap_scaled(self) -> bool:
        # the spatial attention goes to the op as a factored tap scale (forward)
        return self.spatial_fc is not None

    def reset_parameters(self) -> None:
        """Every kernel like ``nn.Conv2d``; the attention FCs like ``nn.Linear``."""
        init_like_conv2d(self.weight, self.bias)
        for fc in (self.fc, self.channel_fc, self.filter_fc, self.spatial_fc, self.kernel_fc):
            if fc is not None:
                fc.reset_parameters()

    def extra_repr(self) -> str:
        heads = [name for name, fc in (("channel", self.channel_fc), ("filter", self.filter_fc),
                                       ("spatial", self.spatial_fc), ("kernel", self.kernel_fc))
                 if fc is not None]
        return (self._geometry_repr(self.bias is not None)
                + f", K={self.num_kernels}, hidden={self.hidden_channels}, "
                f"heads={'+'.join(heads)}, temperature={float(self.temperature):g}"
                + ("" if self.impl == "auto" else f", impl={self.impl}"))

    def attentions(self, x: Tensor) -> dict[str, Tensor | None]:
        """The four attentions for input ``x``, in at least float32.

        Returns ``{"channel": (B, C), "filter": (B, O) | None, "spatial": (B, kh·kw) |
        None, "kernel": (B, K) | None}``; ``None`` means the head is left out (all ones).
        """
        acc = attention_dtype(self.weight)
        with torch.autocast(x.device.type, enabled=False):
            s = F.relu(linear(self.fc, x.to(acc).mean((2, 3))))
            tau = self.temperature.to(acc)
            out: dict[str, Tensor | None] = {
                "channel": torch.sigmoid(linear(self.channel_fc, s) / tau)}
            for name, fc in (("filter", self.filter_fc), ("spatial", self.spatial_fc)):
                out[name] = None if fc is None else torch.sigmoid(linear(fc, s) / tau)
            out["kernel"] = (None if self.kernel_fc is None
                             else torch.softmax(linear(self.kernel_fc, s) / tau, dim=1))
        return out

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.shape[0] == 0:
            return self._empty_forward(x)
        att = self.attentions(x)
        channel, filt, kernel_att = att["channel"], att["filter"], att["kernel"]
        spatial = att["spatial"]
        if kernel_att is None:
            kernel_att = channel.new_ones(x.shape[0], 1)
        # The kernel × spatial attention a[b,k]·s[b,t] stays factored (tap_scale), so the
        # op's plus form is exact for every kernel size (its input columns scaled per tap).
        coeff = kernel_att  # (B, K)
        tap_scale = None if spatial is None else spatial.view(-1, *self.kernel_size)
        bias = None
        if self.bias is not None:  # α_f ⊙ Σ_k α_w b_k, per sample
            bias = kernel_att.to(self.bias.dtype) @ self.bias
            if filt is not None:
                bias = bias * filt.to(bias.dtype)
            bias = bias[:, :, None, None]  # (B, O, 1, 1): a per-sample bias
        x, pad = self.geometry.pad_input(x)
        return mixed_conv2d(x, self.weight, coeff, bias, self.stride, pad, self.dilation,
                            self.groups, in_scale=channel, out_scale=filt, tap_scale=tap_scale,
                            impl=self.impl)
