"""DynamicConv: attention over convolution kernels (Chen et al., CVPR 2020).

``K`` kernels are mixed per sample by a squeeze-and-excitation style attention
``π = softmax(FC₂(ReLU(FC₁(GAP(x)))) / τ)`` over the ``K`` kernels (one weight per kernel,
shared by all output channels): ``y[b] = conv(x[b], Σ_k π[b,k] W_k) + Σ_k π[b,k] b_k``.
The temperature ``τ`` is a buffer annealed 30 → 1 by :class:`a2d2c.TemperatureScheduler`
exactly as for A²D²C (the paper's schedule). The mixture is :func:`a2d2c.ops.mixed_conv2d`
with coefficients ``(B, K)``: the per-sample kernel form, or (the attention does not
depend on the tap) the plus form; ``impl="auto"`` picks the cheaper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.mixed_conv import IMPLS, mixed_conv2d
from ._base import TemperatureMixin, check_choice
from ._dynamic_functional import (
    DynamicConvBase,
    MixedConvDispatch,
    attention_dtype,
    check_ratio,
    init_like_conv2d,
    linear,
)

__all__ = ["DynamicConv2d"]


class DynamicConv2d(MixedConvDispatch, TemperatureMixin, DynamicConvBase):
    """Dynamic convolution (DY-Conv), a drop-in for :class:`nn.Conv2d`.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
        padding_mode: as in :class:`torch.nn.Conv2d`.
        num_kernels: ``K`` (the paper uses 4).
        reduction: hidden width of the attention, ``h = max(int(C·reduction), 1)``
            (the paper's squeeze ratio 4, i.e. 0.25).
        temperature: initial softmax temperature ``τ`` (a buffer).
        impl: the path of :func:`a2d2c.ops.mixed_conv2d` (``"auto"``, ``"kernel"``,
            ``"unfold"``, ``"plus"``, ``"triton"`` or ``"triton_plus"``); all are exact.

    Attributes:
        weight: ``(K, O, C/groups, kh, kw)``; bias: ``(K, O)`` or ``None``.
        fc1: ``nn.Linear(C, h)``; fc2: ``nn.Linear(h, K)``.

    Parameters: ``K·O·(C/g)·kh·kw + K·O·[bias] + (C·h + h) + (h·K + K)``.

    Normalisation: the paper's attention is GAP → FC → ReLU → FC → softmax, with no
    BatchNorm (some public re-implementations add a BatchNorm after the first FC, which
    fails for batch size 1 in training); here there is none, both FCs have a bias, and
    batch size 1 works in training.
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
        reduction: float = 0.25,
        temperature: float = 1.0,
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._init_geometry(in_channels, out_channels, kernel_size, stride, padding,
                            dilation, groups, padding_mode)
        self.reduction = check_ratio(reduction, "reduction")
        self._init_temperature(temperature, device)
        self.impl = check_choice(impl, "impl", IMPLS)
        factory = {"device": device, "dtype": dtype}
        self._init_kernel_bank(num_kernels, bias, factory)
        self.hidden_channels = max(int(in_channels * self.reduction), 1)
        self.fc1 = nn.Linear(in_channels, self.hidden_channels, **factory)
        self.fc2 = nn.Linear(self.hidden_channels, num_kernels, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every kernel like ``nn.Conv2d``; the attention FCs like ``nn.Linear``."""
        init_like_conv2d(self.weight, self.bias)
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def extra_repr(self) -> str:
        return (self._geometry_repr(self.bias is not None)
                + f", K={self.num_kernels}, hidden={self.hidden_channels}, "
                f"temperature={float(self.temperature):g}"
                + ("" if self.impl == "auto" else f", impl={self.impl}"))

    def attention(self, x: Tensor) -> Tensor:
        """``π = softmax(FC₂(ReLU(FC₁(GAP(x)))) / τ)``: ``(B, K)``, in at least float32."""
        acc = attention_dtype(self.weight)
        with torch.autocast(x.device.type, enabled=False):
            z = linear(self.fc2, F.relu(linear(self.fc1, x.to(acc).mean((2, 3)))))
            return torch.softmax(z / self.temperature.to(acc), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.shape[0] == 0:
            return self._empty_forward(x)
        pi = self.attention(x)
        x, pad = self.geometry.pad_input(x)
        return mixed_conv2d(x, self.weight, pi, self.bias, self.stride, pad, self.dilation,
                            self.groups, impl=self.impl)
