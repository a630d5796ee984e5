"""CondConv: conditionally parameterised convolution (Yang et al., NeurIPS 2019).

``K`` expert kernels ``W_k`` are mixed per sample by a routing function
``r = sigmoid(FC(GAP(x))) ∈ (0, 1)^K`` (independent sigmoids, *not* a softmax, so no
temperature): ``y[b] = conv(x[b], Σ_k r[b, k] W_k) + Σ_k r[b, k] b_k``.
The mixture is :func:`a2d2c.ops.mixed_conv2d` with coefficients ``(B, K)``: the
per-sample kernel form (one grouped convolution over the batch, or im2col + GEMM) or,
since the routing does not depend on the tap, the plus form ``Σ_k r_k ⊙ conv(x, W_k)``;
``impl="auto"`` picks the cheaper by the op's cost model. Never a loop over samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..ops.mixed_conv import IMPLS, mixed_conv2d
from ._base import check_choice
from ._dynamic_functional import (
    DynamicConvBase,
    MixedConvDispatch,
    attention_dtype,
    init_like_conv2d,
    linear,
)

__all__ = ["CondConv2d"]


class CondConv2d(MixedConvDispatch, DynamicConvBase):
    """CondConv, a drop-in for :class:`nn.Conv2d` with ``K`` routed expert kernels.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
        padding_mode: as in :class:`torch.nn.Conv2d`.
        num_kernels: ``K``, the number of experts (the paper's ResNet/MobileNet results
            use 8).
        impl: the path of :func:`a2d2c.ops.mixed_conv2d` (``"auto"``, ``"kernel"``,
            ``"unfold"``, ``"plus"``, ``"triton"`` or ``"triton_plus"``); all are exact.

    Attributes:
        weight: ``(K, O, C/groups, kh, kw)``, the experts.
        bias: ``(K, O)`` or ``None``, mixed like the kernels.
        routing: ``nn.Linear(C, K)`` on the globally average-pooled input.

    Parameters: ``K·O·(C/g)·kh·kw + K·O·[bias] + C·K + K``.
    Batch size 1 in training works: the routing has no normalisation layer.
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
        num_kernels: int = 8,
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._init_geometry(in_channels, out_channels, kernel_size, stride, padding,
                            dilation, groups, padding_mode)
        self.impl = check_choice(impl, "impl", IMPLS)
        factory = {"device": device, "dtype": dtype}
        self._init_kernel_bank(num_kernels, bias, factory)
        self.routing = nn.Linear(in_channels, num_kernels, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every expert like ``nn.Conv2d``; the routing like ``nn.Linear``."""
        init_like_conv2d(self.weight, self.bias)
        self.routing.reset_parameters()

    def extra_repr(self) -> str:
        impl = "" if self.impl == "auto" else f", impl={self.impl}"
        return self._geometry_repr(self.bias is not None) + f", K={self.num_kernels}{impl}"

    def routing_weights(self, x: Tensor) -> Tensor:
        """``r = sigmoid(FC(GAP(x)))``: ``(B, K)``, computed in at least float32."""
        acc = attention_dtype(self.routing.weight)
        with torch.autocast(x.device.type, enabled=False):
            pooled = x.to(acc).mean((2, 3))
            return torch.sigmoid(linear(self.routing, pooled))

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.shape[0] == 0:
            return self._empty_forward(x)
        r = self.routing_weights(x)
        x, pad = self.geometry.pad_input(x)
        return mixed_conv2d(x, self.weight, r, self.bias, self.stride, pad, self.dilation,
                            self.groups, impl=self.impl)
