"""Helpers shared by the baseline dynamic convolutions (CondConv, DynamicConv, DCD, ODConv).

The per-sample mixed convolution itself is :func:`a2d2c.ops.mixed_conv2d` (one home for
every layer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.mixed_conv import auto_impl, compute_dtype
from ._base import ConvArgs, check_conv_input, check_positive_int

__all__ = [
    "DynamicConvBase",
    "MixedConvDispatch",
    "attention_dtype",
    "check_ratio",
    "hard_sigmoid",
    "init_like_conv2d",
    "linear",
]


def hard_sigmoid(x: Tensor) -> Tensor:
    """``relu6(x + 3) / 3``, in ``[0, 2]`` and 1 at 0: the gate of the official DCD code.

    (Note the ``/ 3``, not the ``/ 6`` of MobileNetV3's h-sigmoid.)
    """
    return F.relu6(x + 3.0) / 3.0


class MixedConvDispatch:
    """``resolve_impl`` for the layers that hand their kernels to :func:`a2d2c.ops.mixed_conv2d`
    with ``impl=self.impl`` (CondConv, DynamicConv, ODConv; A²D²C has its own, which also
    prices its descriptor)."""

    impl: str

    def _tap_scaled(self) -> bool:
        """Whether the layer passes the op a factored per-tap scale (ODConv)."""
        return False

    def resolve_impl(self, input_shape: Sequence[int], *, training: bool | None = None,
                     device: torch.device | str | None = None) -> str:
        """The op's path for an input of ``input_shape``: an explicit ``impl`` as is, for
        ``"auto"`` the op's cost-model choice (``training``: default the module's flag).
        With benchmarking on (:mod:`a2d2c.ops.tuning`) the op runs the measured fastest
        instead (``tuning.cache_info()``); this returns the model's."""
        if self.impl != "auto":
            return self.impl
        training = self.training if training is None else training
        device_type = torch.device("cpu" if device is None else device).type
        return auto_impl(tuple(input_shape), tuple(self.weight.shape), False,
                         training=training, device_type=device_type, stride=self.stride,
                         padding=self.geometry.padding, dilation=self.dilation,
                         groups=self.groups, tap_scaled=self._tap_scaled())


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
        y = x.new_zeros(0, self.out_channels, ho, wo, dtype=compute_dtype(x))
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
