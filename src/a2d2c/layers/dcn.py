"""DCNv3 and DCNv4: InternImage's and FlashInternImage's deformable token mixers (SPEC §6).

Both are ``C → C`` modules over channels-last features, with the official parameters,
layouts and initialisation, sampling with :func:`a2d2c.ops.dcnv3_core`:

* :class:`DCNv3` takes ``(N, H, W, C)``. Offsets and a per-group softmax mask come from a
  depthwise conv + LayerNorm + GELU of the input; the sampled tensor is the input
  projection. At initialisation (offset and mask layers zero) it is a 3×3 mean of the
  projected input (zero padding), followed by the output projection.
* :class:`DCNv4` takes tokens ``(N, L, C)`` and ``shape=(H, W)``. One linear layer of
  the input gives offsets and mask together (packed, padded to a multiple of 8), the
  mask is not normalised, and ``group_channels`` must be a multiple of 16 (the
  official kernel's requirement, kept so that models transfer). At initialisation the
  packed layer is zero, so the module outputs exactly 0 (without ``center_feature_scale``).

``center_feature_scale=True`` blends the sampled features with the projected input per
group, ``σ·v + (1 − σ)·out`` with ``σ = sigmoid(Linear(C, G))`` (zero-initialised, so σ
starts at 0.5); DCNv3 computes σ from the offset branch's features, DCNv4 from the
sampled output, as the official modules do.

Sampling happens at the input resolution (stride 1, "same" padding); the functional
:func:`a2d2c.ops.dcnv3_core` handles any stride and padding.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.dcn import dcnv3_core, unpack_offset_mask

__all__ = ["DCNv3", "DCNv4"]


def _check(name: str, channels: int, kernel_size: int, pad: int, dilation: int, group: int,
           remove_center: bool) -> int:
    if channels < 1 or group < 1:
        raise ValueError(f"{name}: channels and group must be >= 1, got {channels}, {group}")
    if channels % group:
        raise ValueError(f"{name}: channels={channels} must be divisible by group={group}")
    if kernel_size < 1 or dilation < 1:
        raise ValueError(f"{name}: kernel_size and dilation must be >= 1, got "
                         f"{kernel_size}, {dilation}")
    if 2 * pad != dilation * (kernel_size - 1):
        raise ValueError(f"{name}: the module keeps the input size, so pad must be "
                         f"dilation*(kernel_size-1)/2 = {dilation * (kernel_size - 1) / 2:g}, "
                         f"got pad={pad} (use a2d2c.ops.dcnv3_core for other geometries)")
    if remove_center and kernel_size % 2 == 0:
        raise ValueError(f"{name}: remove_center needs an odd kernel_size, got {kernel_size}")
    return kernel_size * kernel_size - int(remove_center)


def _center_feature_scale(module: nn.Module, channels: int, group: int, enabled: bool,
                          kw: dict) -> None:
    """Register the gate ``σ = sigmoid(Linear(C, G)(x))`` under the official names."""
    if enabled:
        module.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels, **kw))
        module.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group, **kw))
    else:
        module.center_feature_scale_proj_weight = None
        module.center_feature_scale_proj_bias = None


def _gate(module: nn.Module, x: Tensor) -> Tensor:
    scale = torch.sigmoid(F.linear(x, module.center_feature_scale_proj_weight,
                                   module.center_feature_scale_proj_bias))
    return scale.repeat_interleave(module.group_channels, dim=-1)


class DCNv3(nn.Module):
    """InternImage's DCNv3 token mixer over ``(N, H, W, C)`` (channels-last) features.

    Args:
        channels: ``C`` (input = output).
        kernel_size, pad, dilation: the sampling grid (stride 1, output size = input size).
        group: ``G``; ``C`` must be divisible by it.
        offset_scale: scale of the sampling grid and offsets about the kernel centre.
        dw_kernel_size: kernel of the depthwise conv of the offset branch (default
            ``kernel_size``).
        center_feature_scale: blend with the projected input by a learned per-group gate.
        remove_center: drop the centre point (8 points for 3×3).
        act_layer, norm_layer: of the offset branch (GELU, LayerNorm eps 1e-6).

    The sampling is the class attribute ``core`` (:func:`a2d2c.ops.dcnv3_core`); a
    subclass may swap in another implementation of the same function.
    """

    core = staticmethod(dcnv3_core)

    def __init__(
        self,
        channels: int = 64,
        kernel_size: int = 3,
        dw_kernel_size: int | None = None,
        stride: int = 1,
        pad: int = 1,
        dilation: int = 1,
        group: int = 4,
        offset_scale: float = 1.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        norm_layer: Callable[[int], nn.Module] | None = None,
        center_feature_scale: bool = False,
        remove_center: bool = False,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if stride != 1:
            raise ValueError(f"DCNv3: stride must be 1 (the module keeps the input size), got "
                             f"{stride}; use a2d2c.ops.dcnv3_core for strided sampling")
        self.num_points = _check("DCNv3", channels, kernel_size, pad, dilation, group,
                                 remove_center)
        dw = kernel_size if dw_kernel_size is None else dw_kernel_size
        if dw < 1 or dw % 2 == 0:
            raise ValueError(f"DCNv3: dw_kernel_size must be odd and >= 1, got {dw}")
        kw = dict(device=device, dtype=dtype)
        self.channels, self.kernel_size, self.dw_kernel_size = channels, kernel_size, dw
        self.stride, self.pad, self.dilation, self.group = 1, pad, dilation, group
        self.group_channels = channels // group
        self.offset_scale, self.remove_center = float(offset_scale), bool(remove_center)
        self.center_feature_scale = bool(center_feature_scale)
        self.dw_conv = nn.Conv2d(channels, channels, dw, padding=(dw - 1) // 2, groups=channels,
                                 **kw)
        self.dw_norm = (norm_layer(channels) if norm_layer is not None
                        else nn.LayerNorm(channels, eps=1e-6, **kw))
        self.dw_act = act_layer()
        self.offset = nn.Linear(channels, group * self.num_points * 2, **kw)
        self.mask = nn.Linear(channels, group * self.num_points, **kw)
        self.input_proj = nn.Linear(channels, channels, **kw)
        self.output_proj = nn.Linear(channels, channels, **kw)
        _center_feature_scale(self, channels, group, self.center_feature_scale, kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: offset and mask layers zero, projections xavier."""
        for lin in (self.offset, self.mask):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        for lin in (self.input_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.dw_conv.reset_parameters()
        if self.center_feature_scale:
            nn.init.zeros_(self.center_feature_scale_proj_weight)
            nn.init.zeros_(self.center_feature_scale_proj_bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-1] != self.channels:
            raise ValueError(f"DCNv3 expects channels-last (N, H, W, {self.channels}), got "
                             f"{tuple(x.shape)}")
        n, h, w, _ = x.shape
        v = self.input_proj(x)
        x1 = self.dw_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x1 = self.dw_act(self.dw_norm(x1))
        offset = self.offset(x1)
        mask = self.mask(x1).view(n, h, w, self.group, self.num_points).softmax(-1)
        mask = mask.flatten(-2).to(v.dtype)
        out = self.core(v, offset, mask, self.kernel_size, self.kernel_size, 1, 1, self.pad,
                        self.pad, self.dilation, self.dilation, self.group, self.group_channels,
                        self.offset_scale, self.remove_center)
        if self.center_feature_scale:
            s = _gate(self, x1)
            out = out * (1 - s) + v * s
        return self.output_proj(out)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, group={self.group}, "
                f"points={self.num_points}, offset_scale={self.offset_scale}, "
                f"center_feature_scale={self.center_feature_scale}")


class DCNv4(nn.Module):
    """FlashInternImage's DCNv4 token mixer over tokens ``(N, L, C)``, ``L = H·W``.

    Args:
        channels: ``C`` (input = output); ``C / group`` must be a multiple of 16.
        kernel_size, pad, dilation: the sampling grid (stride 1, output size = input size).
        group: ``G``.
        offset_scale: scale of the sampling grid and offsets about the kernel centre.
        dw_kernel_size: if set, offsets and mask come from a depthwise conv of the input
            (no norm, no activation) instead of the input itself.
        center_feature_scale: blend with the projected input by a learned per-group gate.
        remove_center: drop the centre point.
        output_bias: bias of the output projection (FlashInternImage: ``False``).
        without_pointwise: no value and output projections.

    ``forward(x, shape=(H, W))``; ``shape`` may be omitted for square inputs. The
    sampling is the class attribute ``core``, as in :class:`DCNv3`.
    """

    core = staticmethod(dcnv3_core)

    def __init__(
        self,
        channels: int = 64,
        kernel_size: int = 3,
        stride: int = 1,
        pad: int = 1,
        dilation: int = 1,
        group: int = 4,
        offset_scale: float = 1.0,
        dw_kernel_size: int | None = None,
        center_feature_scale: bool = False,
        remove_center: bool = False,
        output_bias: bool = True,
        without_pointwise: bool = False,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if stride != 1:
            raise ValueError(f"DCNv4: stride must be 1 (the module keeps the input size), got "
                             f"{stride}; use a2d2c.ops.dcnv3_core for strided sampling")
        self.num_points = _check("DCNv4", channels, kernel_size, pad, dilation, group,
                                 remove_center)
        if (channels // group) % 16:
            raise ValueError(f"DCNv4: channels/group must be a multiple of 16, got "
                             f"{channels}/{group} = {channels // group}; change group")
        if dw_kernel_size is not None and (dw_kernel_size < 1 or dw_kernel_size % 2 == 0):
            raise ValueError(f"DCNv4: dw_kernel_size must be odd and >= 1, got {dw_kernel_size}")
        kw = dict(device=device, dtype=dtype)
        self.channels, self.kernel_size, self.dw_kernel_size = channels, kernel_size, \
            dw_kernel_size
        self.stride, self.pad, self.dilation, self.group = 1, pad, dilation, group
        self.group_channels = channels // group
        self.offset_scale, self.remove_center = float(offset_scale), bool(remove_center)
        self.center_feature_scale = bool(center_feature_scale)
        self.without_pointwise = bool(without_pointwise)
        self.offset_mask_dw = (nn.Conv2d(channels, channels, dw_kernel_size,
                                         padding=(dw_kernel_size - 1) // 2, groups=channels,
                                         **kw) if dw_kernel_size is not None else None)
        packed = group * self.num_points * 3
        self.offset_mask = nn.Linear(channels, int(math.ceil(packed / 8) * 8), **kw)
        if without_pointwise:
            self.value_proj = self.output_proj = None
        else:
            self.value_proj = nn.Linear(channels, channels, **kw)
            self.output_proj = nn.Linear(channels, channels, bias=output_bias, **kw)
        _center_feature_scale(self, channels, group, self.center_feature_scale, kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: ``offset_mask`` zero, projections xavier, biases 0."""
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        for lin in (self.value_proj, self.output_proj):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
        if self.offset_mask_dw is not None:
            self.offset_mask_dw.reset_parameters()
        if self.center_feature_scale:
            nn.init.zeros_(self.center_feature_scale_proj_weight)
            nn.init.zeros_(self.center_feature_scale_proj_bias)

    def forward(self, x: Tensor, shape: tuple[int, int] | None = None) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.channels:
            raise ValueError(f"DCNv4 expects tokens (N, L, {self.channels}), got "
                             f"{tuple(x.shape)}")
        n, length, c = x.shape
        if shape is None:
            side = math.isqrt(length)
            if side * side != length:
                raise ValueError(f"DCNv4: {length} tokens are not a square grid; pass "
                                 "shape=(H, W)")
            shape = (side, side)
        h, w = shape
        if h * w != length:
            raise ValueError(f"DCNv4: shape={tuple(shape)} has {h * w} positions but the "
                             f"input has {length} tokens")
        v = self.value_proj(x) if self.value_proj is not None else x
        v = v.reshape(n, h, w, c)
        om_in = x
        if self.offset_mask_dw is not None:
            om_in = self.offset_mask_dw(x.reshape(n, h, w, c).permute(0, 3, 1, 2))
            om_in = om_in.permute(0, 2, 3, 1)
        om = self.offset_mask(om_in).reshape(n, h, w, -1)
        offset, mask = unpack_offset_mask(om, self.group, self.num_points)
        out = self.core(v, offset, mask, self.kernel_size, self.kernel_size, 1, 1, self.pad,
                        self.pad, self.dilation, self.dilation, self.group, self.group_channels,
                        self.offset_scale, self.remove_center)
        if self.center_feature_scale:
            s = _gate(self, out)
            out = out * (1 - s) + v * s
        out = out.reshape(n, length, c)
        return self.output_proj(out) if self.output_proj is not None else out

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, group={self.group}, "
                f"points={self.num_points}, offset_scale={self.offset_scale}, "
                f"center_feature_scale={self.center_feature_scale}")
