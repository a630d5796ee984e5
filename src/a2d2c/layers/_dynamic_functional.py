"""Helpers shared by the baseline dynamic convolutions (CondConv, DynamicConv, DCD, ODConv).

Kept apart from ``_functional.py`` (which the A²D²C kernel form owns) so that the two can
evolve independently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import ConvArgs, check_conv_input, check_positive_int

__all__ = [
    "DynamicConvBase",
    "attention_dtype",
    "check_ratio",
    "hard_sigmoid",
    "init_like_conv2d",
    "linear",
    "omni_aggregated_conv2d",
]


def hard_sigmoid(x: Tensor) -> Tensor:
    """``relu6(x + 3) / 3``, in ``[0, 2]`` and 1 at 0: the gate of the official DCD code.

    (Note the ``/ 3``, not the ``/ 6`` of MobileNetV3's h-sigmoid.)
    """
    return F.relu6(x + 3.0) / 3.0


class DynamicConvBase(nn.Module):
    """Geometry, input checks and ``extra_repr`` shared by the baseline layers.

    Subclasses call :meth:`_init_geometry` with the ``nn.Conv2d`` arguments first; the
    validated :class:`ConvArgs` is ``self.geometry`` and its fields are mirrored as the
    usual ``nn.Conv2d`` attributes (``in_channels``, ``kernel_size``, ``stride``, ...).
    """

    geometry: ConvArgs

    def _init_geometry(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int],
        padding: int | Sequence[int] | str,
        dilation: int | Sequence[int],
        groups: int,
        padding_mode: str,
    ) -> ConvArgs:
        g = ConvArgs(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                     padding_mode)
        self.geometry = g
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.dilation = g.kernel_size, g.stride, g.dilation
        self.padding, self.padding_mode = g.padding, g.padding_mode
        return g

    def _init_kernel_bank(self, num_kernels: int, bias: bool,
                          factory: dict[str, Any]) -> None:
        """``self.num_kernels`` (validated), the bank ``weight (K, O, C/g, kh, kw)`` and
        ``bias (K, O)`` or ``None``, uninitialised (``reset_parameters`` fills them)."""
        g = self.geometry
        k = self.num_kernels = check_positive_int(num_kernels, "num_kernels", "K")
        self.weight = nn.Parameter(torch.empty(k, g.out_channels, g.in_channels // g.groups,
                                               *g.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(k, g.out_channels, **factory)) if bias else None

    def _check_input(self, x: Tensor) -> None:
        check_conv_input(x, self.geometry, type(self).__name__, self.weight.dtype)

    def _empty_forward(self, x: Tensor) -> Tensor:
        """The output for an empty batch (``B = 0``), as ``nn.Conv2d`` gives one.

        ``(0, O, H', W')`` in the dtype the convolution would run in, connected to the
        input and to every parameter, so that ``backward`` works and leaves zero gradients
        (the attention paths reshape over the batch and cannot run on zero samples).
        """
        ho, wo = self.geometry.output_size(x.shape[2], x.shape[3])
        y = x.new_zeros(0, self.out_channels, ho, wo, dtype=_compute_dtype(x))
        for t in (x, *self.parameters()):
            if t.requires_grad:
                y = y + t.reshape(-1)[:0].sum().to(y.dtype)  # an exact 0 with a zero gradient
        return y

    def _geometry_repr(self, has_bias: bool) -> str:
        g = self.geometry
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={g.kernel_size}, "
             f"stride={g.stride}")
        if g.padding != (0, 0):
            s += f", padding={g.padding}"
        if g.dilation != (1, 1):
            s += f", dilation={g.dilation}"
        if g.groups != 1:
            s += f", groups={g.groups}"
        if not has_bias:
            s += ", bias=False"
        if g.padding_mode != "zeros":
            s += f", padding_mode={g.padding_mode}"
        return s


def init_like_conv2d(weight: Tensor, bias: Tensor | None) -> None:
    """Initialise ``K`` stacked kernels ``(K, O, C/g, kh, kw)`` each exactly like ``nn.Conv2d``.

    ``bias`` is ``(K, O)`` or ``(O,)`` and drawn from ``U(±1/√fan_in)``.
    """
    stacked = weight.dim() == 5
    kernels = weight if stacked else weight.unsqueeze(0)
    for k in range(kernels.shape[0]):
        # nn.Conv2d.reset_parameters: kaiming_uniform_(a=√5), bias U(±1/√fan_in).
        nn.init.kaiming_uniform_(kernels[k], a=math.sqrt(5))
    if bias is not None:
        fan_in = kernels.shape[2] * kernels.shape[3] * kernels.shape[4]
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(bias, -bound, bound)


def check_ratio(value: float, name: str, symbol: str | None = None) -> float:
    """Validate a ratio in ``(0, 1]`` such as ``reduction``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        label = f"{name} ({symbol})" if symbol else name
        raise ValueError(f"{label} must be a number in (0, 1], got {value!r}")
    return float(value)


def attention_dtype(param: Tensor) -> torch.dtype:
    """The dtype the attention branches run in: the parameters' dtype, at least float32.

    The attention is computed with autocast disabled, so that under mixed precision only
    the convolutions run in the low-precision dtype (as for :class:`A2D2Conv2d`).
    """
    return torch.promote_types(param.dtype, torch.float32)


def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)`` with the layer's parameters cast to ``x``'s dtype (attention precision)."""
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, layer.weight.to(x.dtype), bias)


def _compute_dtype(x: Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _omni_mix(pi: Tensor, weight: Tensor, spatial: Tensor | None, channel: Tensor | None,
              groups: int) -> tuple[Tensor, Tensor]:
    """``(mixed, kernels)``: ``mixed = Σ_k pi_k ⊙ W_k`` and ``kernels = mixed ⊙ s ⊙ a``.

    Shapes ``(B, g, O/g, C/g, T)``; ``pi (B, K, O)``, ``weight (K, O, C/g, kh, kw)``,
    ``spatial (B, T)``, ``channel (B, C)``.
    """
    b = pi.shape[0]
    k, o, cg = weight.shape[:3]
    w = weight.reshape(k, o, -1)
    mixed = pi[:, 0, :, None] * w[0]
    for i in range(1, k):
        mixed = mixed.addcmul_(pi[:, i, :, None], w[i])
    mixed = mixed.view(b, groups, o // groups, cg, -1)
    kernels = mixed
    if spatial is not None:
        kernels = kernels * spatial[:, None, None, None, :]
    if channel is not None:
        kernels = kernels * channel.view(b, groups, 1, cg, 1)
    return mixed, kernels


class _OmniAggregatedConv2d(torch.autograd.Function):
    """See :func:`omni_aggregated_conv2d`. Saves only the inputs; kernels are recomputed."""

    @staticmethod
    def forward(ctx, x, pi, weight, bias, spatial, channel, stride, padding, dilation, groups):
        b, c, h, w = x.shape
        o = weight.shape[1]
        cdt = _compute_dtype(x)
        wdt = weight.dtype
        sp = None if spatial is None else spatial.to(wdt)
        ch = None if channel is None else channel.to(wdt)
        _, kernels = _omni_mix(pi.to(wdt), weight, sp, ch, groups)
        agg_bias = None if bias is None else torch.einsum("bko,ko->bo", pi.to(wdt), bias)
        with torch.autocast(x.device.type, enabled=False):
            y = F.conv2d(
                x.reshape(1, b * c, h, w).to(cdt),
                kernels.reshape(b * o, *weight.shape[2:]).to(cdt),
                None if agg_bias is None else agg_bias.reshape(-1).to(cdt),
                stride, padding, dilation, b * groups,
            )
        ctx.save_for_backward(x, pi, weight, bias, spatial, channel)
        ctx.conf = (stride, padding, dilation, groups, cdt)
        return y.view(b, o, *y.shape[2:])

    @staticmethod
    def backward(ctx, grad_y):
        x, pi, weight, bias, spatial, channel = ctx.saved_tensors
        stride, padding, dilation, groups, cdt = ctx.conf
        b, c, h, w = x.shape
        k, o = weight.shape[:2]
        wdt = weight.dtype
        pi_w = pi.to(wdt)
        sp = None if spatial is None else spatial.to(wdt)
        ch = None if channel is None else channel.to(wdt)
        mixed, kernels = _omni_mix(pi_w, weight, sp, ch, groups)
        grad_x, grad_kernels, _ = torch.ops.aten.convolution_backward(
            grad_y.reshape(1, b * o, *grad_y.shape[2:]).to(cdt),
            x.reshape(1, b * c, h, w).to(cdt),
            kernels.reshape(b * o, *weight.shape[2:]).to(cdt),
            None, list(stride), list(padding), list(dilation), False, [0, 0], b * groups,
            [ctx.needs_input_grad[0], True, False],
        )
        gk = grad_kernels.view(mixed.shape).to(wdt)  # (B, g, O/g, C/g, T)
        grad_spatial = grad_channel = None
        if sp is not None and ctx.needs_input_grad[4]:
            scaled = mixed if ch is None else mixed * ch.view(b, groups, 1, -1, 1)
            grad_spatial = (gk * scaled).sum((1, 2, 3)).to(spatial.dtype)
        if ch is not None and ctx.needs_input_grad[5]:
            scaled = mixed if sp is None else mixed * sp[:, None, None, None, :]
            grad_channel = (gk * scaled).sum((2, 4)).reshape(b, c).to(channel.dtype)
        g_mixed = gk
        if sp is not None:
            g_mixed = g_mixed * sp[:, None, None, None, :]
        if ch is not None:
            g_mixed = g_mixed * ch.view(b, groups, 1, -1, 1)
        # (B, O, m) -> (O, B, m) once, so both contractions are contiguous batched GEMMs.
        g_t = g_mixed.reshape(b, o, -1).transpose(0, 1).contiguous()
        grad_pi = grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            w_t = weight.reshape(k, o, -1).permute(1, 2, 0).contiguous()  # (O, m, K)
            grad_pi = torch.bmm(g_t, w_t).permute(1, 2, 0)  # (B, K, O)
        if ctx.needs_input_grad[2]:
            grad_weight = torch.bmm(pi_w.permute(2, 1, 0).contiguous(), g_t)  # (O, K, m)
            grad_weight = grad_weight.transpose(0, 1).reshape(weight.shape)
        if bias is not None:
            grad_agg_bias = grad_y.sum((2, 3)).to(bias.dtype)  # (B, O)
            if grad_pi is not None:
                grad_pi = grad_pi + grad_agg_bias[:, None, :] * bias
            if ctx.needs_input_grad[3]:
                grad_bias = torch.einsum("bko,bo->ko", pi_w, grad_agg_bias)
        grad_x = None if grad_x is None else grad_x.view(b, c, h, w).to(x.dtype)
        grad_pi = None if grad_pi is None else grad_pi.to(pi.dtype)
        return (grad_x, grad_pi, grad_weight, grad_bias, grad_spatial, grad_channel,
                None, None, None, None)


def omni_aggregated_conv2d(
    x: Tensor,
    pi: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    spatial: Tensor | None = None,
    channel: Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> Tensor:
    """Convolve each sample with its own kernel ``Σ_k pi[b,k,o]·W_k ⊙ s[b] ⊙ a[b]``.

    The kernel of sample ``b`` is, for output channel ``o``, input channel ``c`` (of ``o``'s
    group) and tap ``t``: ``Σ_k pi[b,k,o]·W_k[o,c,t] · spatial[b,t] · channel[b, c_abs]``;
    the bias is ``Σ_k pi[b,k,o]·bias[k,o]``. One grouped convolution over the batch, as a
    custom autograd function that saves only its inputs (never the ``B·O·C/g·kh·kw``
    per-sample kernels: they are recomputed in backward, which costs ``~K`` multiply-adds
    per kernel element, far below the convolution itself).

    Args:
        x: ``(B, C, H, W)``.
        pi: ``(B, K, O)``, per-sample, per-kernel, per-output-channel weights.
        weight: ``(K, O, C/groups, kh, kw)``; bias: ``(K, O)`` or ``None``.
        spatial: ``(B, kh·kw)`` tap weights, or ``None`` (all ones).
        channel: ``(B, C)`` input-channel weights, or ``None`` (all ones).

    Under autocast the convolution runs in the autocast dtype, the mixing in the
    parameters' dtype.
    """
    return _OmniAggregatedConv2d.apply(x, pi, weight, bias, spatial, channel, tuple(stride),
                                       tuple(padding), tuple(dilation), groups)
