"""The deformable sampling of DCNv3 and DCNv4, in pure PyTorch (SPEC §6).

``dcnv3_core`` is the one operator both modules use: DCNv4 is the same sampling with a
packed offset/mask tensor and no softmax (:func:`unpack_offset_mask`). For every output
position, group and kernel point it samples the group's channels bilinearly at a
learned position and sums the samples weighted by the mask.

Why our own: the official operators are CUDA-only (their CPU paths raise), and the
official PyTorch reference samples all ``P`` points with one ``grid_sample``, which
holds ``P`` times the output in memory for backward (and pads W by ``pad_h`` and H by
``pad_w``). Here the forward and the backward loop over the kernel points: memory is
bounded by a few output-sized buffers whatever ``P`` is, nothing is saved for backward
but the inputs, and the backward recomputes each point's four bilinear corners (a
custom :class:`torch.autograd.Function`; gathers and ``index_add_`` instead of
``grid_sample`` so that positions are exact — ``grid_sample``'s normalised
coordinates round, which moves the one-sided derivative at integer positions).

Numerics: positions and accumulation are float32 (float64 for float64 inputs), whatever
the input dtype; under bf16/fp16 autocast the output has the value's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

__all__ = ["CHUNK_ELEMENTS", "dcn_output_size", "dcnv3_core", "unpack_offset_mask"]


def dcn_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """Output length of one spatial dimension (the convolution formula)."""
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def _points(kernel_h: int, kernel_w: int, remove_center: bool) -> list[tuple[int, int]]:
    # SPEC §6: x-outer (i, the kernel column), y-inner (j, the kernel row), centre skipped.
    return [(i, j) for i in range(kernel_w) for j in range(kernel_h)
            if not (remove_center and i == kernel_w // 2 and j == kernel_h // 2)]


def _corners(x: Tensor, y: Tensor, height: int, width: int):
    """The four bilinear corners of positions ``x, y`` (flat, pixel coordinates).

    Yields ``(index, weight, dw_dx, dw_dy)`` per corner: the clamped pixel index
    ``y·W + x``, the bilinear weight (zero for corners outside the image and for samples
    outside ``-1 < x < W``, ``-1 < y < H``) and its derivatives in ``x`` and ``y``.
    """
    inside = (x > -1) & (x < width) & (y > -1) & (y < height)  # False for NaN
    xs = torch.where(inside, x, torch.zeros_like(x))
    ys = torch.where(inside, y, torch.zeros_like(y))
    x0, y0 = torch.floor(xs), torch.floor(ys)
    lx, ly = xs - x0, ys - y0
    hx, hy = 1 - lx, 1 - ly
    x0l, y0l = x0.long(), y0.long()
    inside_f = inside.to(x.dtype)
    for dy, wy, dwy in ((0, hy, -1.0), (1, ly, 1.0)):
        for dx, wx, dwx in ((0, hx, -1.0), (1, lx, 1.0)):
            xi, yi = x0l + dx, y0l + dy
            valid = inside_f * ((xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)).to(x.dtype)
            index = yi.clamp(0, height - 1) * width + xi.clamp(0, width - 1)
            yield index, wx * wy * valid, dwx * wy * valid, wx * dwy * valid


#: Elements of one chunk's gathered samples (points × output positions × channels):
#: the forward and the backward take as many kernel points at a time as fit, at least one.
CHUNK_ELEMENTS = 1 << 20


class _Geometry:
    """Everything about the sampling except the tensors (kept by the Function)."""

    def __init__(self, value: Tensor, offset: Tensor, args: tuple) -> None:
        (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw, self.dh, self.dw,
         self.group, self.gc, self.scale, self.remove_center) = args
        self.n, self.h, self.w, _ = value.shape
        self.ho, self.wo = offset.shape[1], offset.shape[2]
        self.points = _points(self.kh, self.kw, self.remove_center)
        self.num_points = len(self.points)
        rows = self.n * self.ho * self.wo * self.group
        per_point = max(1, rows * self.gc)
        step = max(1, min(self.num_points, CHUNK_ELEMENTS // per_point))
        self.chunks = [(p, min(p + step, self.num_points)) for p in range(0, self.num_points, step)]

    def bases(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """The reference positions of the output grid, ``(Wo,)`` and ``(Ho,)``.

        SPEC §6: ``x = wo·stride_w − pad_w + c_w − c_w·s + (i·dil_w + Δx)·s``; this is the
        part before ``+ (i·dil_w + Δx)·s``, evaluated in the formula's order.
        """
        s = self.scale
        cw, ch = (self.dw * (self.kw - 1)) >> 1, (self.dh * (self.kh - 1)) >> 1
        wo = torch.arange(self.wo, device=device, dtype=dtype)
        ho = torch.arange(self.ho, device=device, dtype=dtype)
        return wo * self.sw - self.pw + cw - cw * s, ho * self.sh - self.ph + ch - ch * s

    def positions(self, offset: Tensor, a: int, b: int, bx: Tensor,
                  by: Tensor) -> tuple[Tensor, Tensor]:
        """Sample positions of points ``a..b-1``, each ``(N, Ho, Wo, G, b-a)`` flattened."""
        s = self.scale
        pts = self.points[a:b]
        ix = torch.tensor([i * self.dw for i, _ in pts], dtype=offset.dtype,
                          device=offset.device)
        jy = torch.tensor([j * self.dh for _, j in pts], dtype=offset.dtype,
                          device=offset.device)
        off = offset.view(self.n, self.ho, self.wo, self.group, self.num_points, 2)[..., a:b, :]
        x = bx.view(1, 1, -1, 1, 1) + (ix + off[..., 0]) * s
        y = by.view(1, -1, 1, 1, 1) + (jy + off[..., 1]) * s
        return x.reshape(-1), y.reshape(-1)

    def rows(self, index: Tensor, device: torch.device) -> Tensor:
        """Rows of the ``(N·H·W·G, D)`` value matrix for flat ``(N, Ho, Wo, G, Pc)`` pixels."""
        n = torch.arange(self.n, device=device).view(-1, 1, 1, 1, 1)
        g = torch.arange(self.group, device=device).view(1, 1, 1, -1, 1)
        idx = index.view(self.n, self.ho, self.wo, self.group, -1)
        return ((n * (self.h * self.w) + idx) * self.group + g).reshape(-1)


def _nonfinite(x: Tensor, y: Tensor) -> Tensor:
    return ~(torch.isfinite(x) & torch.isfinite(y))


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _forward(value: Tensor, offset: Tensor, mask: Tensor, args: tuple) -> Tensor:
    geo = _Geometry(value, offset, args)
    cdt = _compute_dtype(value, offset, mask)
    v = value.to(cdt).contiguous().view(-1, geo.gc)  # (N·H·W·G, D)
    off = offset.to(cdt).contiguous()
    msk = mask.to(cdt).contiguous().view(-1, geo.num_points)  # (N·Ho·Wo·G, P)
    bx, by = geo.bases(cdt, value.device)
    out = v.new_zeros(msk.shape[0], geo.gc)
    for a, b in geo.chunks:
        x, y = geo.positions(off, a, b, bx, by)
        sample = v.new_zeros(x.shape[0], geo.gc)
        for index, weight, _, _ in _corners(x, y, geo.h, geo.w):
            sample.addcmul_(torch.index_select(v, 0, geo.rows(index, value.device)),
                            weight[:, None])
        # Non-finite positions: NaN at that (n, ho, wo, g), nowhere else.
        bad = _nonfinite(x, y)
        if bad.any():
            sample[bad] = float("nan")
        sample = sample.view(-1, b - a, geo.gc)
        out += torch.einsum("mpd,mp->md", sample, msk[:, a:b])
    return out.view(geo.n, geo.ho, geo.wo, geo.group * geo.gc).to(value.dtype)


def _backward(grad_out: Tensor, value: Tensor, offset: Tensor, mask: Tensor,
          args: tuple) -> tuple[Tensor, Tensor, Tensor]:
    geo = _Geometry(value, offset, args)
    cdt = _compute_dtype(value, offset, mask)
    v = value.to(cdt).contiguous().view(-1, geo.gc)
    off = offset.to(cdt).contiguous()
    msk = mask.to(cdt).contiguous().view(-1, geo.num_points)
    go = grad_out.to(cdt).contiguous().view(-1, geo.gc)
    bx, by = geo.bases(cdt, value.device)
    grad_v = torch.zeros_like(v)
    grad_off = torch.zeros(msk.shape[0], geo.num_points, 2, dtype=cdt, device=v.device)
    grad_m = torch.zeros_like(msk)
    for a, b in geo.chunks:
        pc = b - a
        x, y = geo.positions(off, a, b, bx, by)
        mk = msk[:, a:b].reshape(-1)  # (M·Pc,)
        go_rep = go[:, None, :].expand(-1, pc, -1).contiguous()  # (M, Pc, D)
        # Per corner c with weight w_c: e_c = grad·v_c; dL/dmask = Σ_c w_c e_c and
        # dL/dx = mask · Σ_c (∂w_c/∂x) e_c; dL/dv_c += mask · w_c · grad.
        gmask = gx = gy = None
        for index, weight, dwx, dwy in _corners(x, y, geo.h, geo.w):
            rows = geo.rows(index, value.device)
            scaled = go_rep * (mk * weight).view(-1, pc, 1)
            # index_put_ with accumulate: faster than index_add_ on CPU (measured).
            grad_v.index_put_((rows,), scaled.view(-1, geo.gc), accumulate=True)
            corner = torch.index_select(v, 0, rows).view(-1, pc, geo.gc)
            e = torch.einsum("mpd,mpd->mp", go_rep, corner).reshape(-1)
            gmask = e * weight if gmask is None else gmask.addcmul_(e, weight)
            gx = e * dwx if gx is None else gx.addcmul_(e, dwx)
            gy = e * dwy if gy is None else gy.addcmul_(e, dwy)
        gx, gy = gx * mk, gy * mk
        bad = _nonfinite(x, y)
        if bad.any():  # non-finite positions: NaN gradients there (the output is NaN)
            gmask[bad] = float("nan")
            gx[bad] = float("nan")
            gy[bad] = float("nan")
        grad_m[:, a:b] = gmask.view(-1, pc)
        grad_off[:, a:b, 0] = (gx * geo.scale).view(-1, pc)
        grad_off[:, a:b, 1] = (gy * geo.scale).view(-1, pc)
    return (grad_v.view(value.shape).to(value.dtype),
            grad_off.view(offset.shape).to(offset.dtype),
            grad_m.view(mask.shape).to(mask.dtype))


# A registered custom op: torch.compile treats it as one opaque node, and the FLOP counter
# sees one call and counts it by the formula below instead of its inner gathers.
@torch.library.custom_op("a2d2c::dcnv3_core", mutates_args=())
def _dcnv3_op(value: Tensor, offset: Tensor, mask: Tensor, kernel_h: int, kernel_w: int,
              stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
              dilation_w: int, group: int, group_channels: int, offset_scale: float,
              remove_center: bool) -> Tensor:
    return _forward(value, offset, mask, (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                          dilation_h, dilation_w, group, group_channels,
                                          offset_scale, remove_center))


@_dcnv3_op.register_fake
def _(value, offset, mask, *args):
    return value.new_empty(value.shape[0], offset.shape[1], offset.shape[2], value.shape[3])


@torch.library.custom_op("a2d2c::dcnv3_core_backward", mutates_args=())
def _dcnv3_backward_op(grad: Tensor, value: Tensor, offset: Tensor, mask: Tensor,
                       kernel_h: int, kernel_w: int, stride_h: int, stride_w: int, pad_h: int,
                       pad_w: int, dilation_h: int, dilation_w: int, group: int,
                       group_channels: int, offset_scale: float,
                       remove_center: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _backward(grad, value, offset, mask, (kernel_h, kernel_w, stride_h, stride_w, pad_h,
                                                 pad_w, dilation_h, dilation_w, group,
                                                 group_channels, offset_scale, remove_center))


@_dcnv3_backward_op.register_fake
def _(grad, value, offset, mask, *args):
    return torch.empty_like(value), torch.empty_like(offset), torch.empty_like(mask)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:3])
    ctx.args = inputs[3:]


def _autograd_backward(ctx, grad: Tensor):
    value, offset, mask = ctx.saved_tensors
    grads = _dcnv3_backward_op(grad, value, offset, mask, *ctx.args)
    return (*grads, *([None] * len(ctx.args)))


_dcnv3_op.register_autograd(_autograd_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.a2d2c.dcnv3_core)
def _dcnv3_flops(value_shape, offset_shape, mask_shape, *args, out_shape=None,
                 **kwargs) -> int:
    """InternImage's own FLOPs script's count, ``5·Ho·Wo·P·C`` multiply-adds (2 FLOPs each):
    four bilinear corners and the mask weighting per point and channel."""
    n, ho, wo, c = out_shape
    points = mask_shape[-1] // args[-4]  # mask: G·P channels; args[-4] is group
    return 2 * 5 * n * ho * wo * points * c


def dcnv3_core(
    value: Tensor,
    offset: Tensor,
    mask: Tensor,
    kernel_h: int = 3,
    kernel_w: int = 3,
    stride_h: int = 1,
    stride_w: int = 1,
    pad_h: int = 1,
    pad_w: int = 1,
    dilation_h: int = 1,
    dilation_w: int = 1,
    group: int = 1,
    group_channels: int | None = None,
    offset_scale: float = 1.0,
    remove_center: bool = False,
) -> Tensor:
    """Deformable sampling of DCNv3/DCNv4, channels-last (the official operator's arguments).

    Args:
        value: ``(N, H, W, G·D)``.
        offset: ``(N, Ho, Wo, G·P·2)``, ``P = kernel_h·kernel_w − remove_center``; per group,
            per point, the (x, y) offsets in pixels, x (width) first. Points run over the
            kernel x-outer, y-inner (``p = i·kernel_h + j``, ``i`` the column).
        mask: ``(N, Ho, Wo, G·P)``, the weight of every point (DCNv3 passes a softmax,
            DCNv4 the raw values).
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w: the
            sampling grid, as in a convolution (``Ho``, ``Wo`` follow the usual formula).
        group: ``G``; ``group_channels``: ``D`` (default ``C // G``).
        offset_scale: ``s``; the grid and the offsets are scaled by it about the kernel
            centre.
        remove_center: skip the centre point (odd kernels only).

    Returns:
        ``(N, Ho, Wo, G·D)``: ``out[n, ho, wo, g] = Σ_p mask[..., g, p] ·
        bilinear(value[n, :, :, g], x_p, y_p)`` with
        ``x_p = wo·stride_w − pad_w + c_w − c_w·s + (i·dilation_w + Δx)·s`` (``c_w =
        dilation_w·(kernel_w − 1) // 2``, likewise ``y``), pixel coordinates with the
        integer at the pixel centre, zero outside the image (a sample counts only when
        ``−1 < x < W`` and ``−1 < y < H``).

    Non-finite offsets or mask values give NaN in the output at that position and group
    and nowhere else (and NaN gradients there); they are not silently dropped.
    Differentiable in ``value``, ``offset`` and ``mask`` (first order).
    """
    for name, t in (("value", value), ("offset", offset), ("mask", mask)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            raise ValueError(f"dcnv3_core: {name} must be a 4-d channels-last tensor "
                             f"(N, H, W, C), got {getattr(t, 'shape', type(t).__name__)}")
        if not t.is_floating_point():
            raise TypeError(f"dcnv3_core: {name} must be floating point, got {t.dtype}")
    ints = dict(kernel_h=kernel_h, kernel_w=kernel_w, stride_h=stride_h, stride_w=stride_w,
                dilation_h=dilation_h, dilation_w=dilation_w, group=group)
    for name, val in ints.items():
        if int(val) != val or val < 1:
            raise ValueError(f"dcnv3_core: {name} must be a positive integer, got {val!r}")
    if int(pad_h) != pad_h or int(pad_w) != pad_w or pad_h < 0 or pad_w < 0:
        raise ValueError(f"dcnv3_core: pad_h and pad_w must be integers >= 0, got "
                         f"{pad_h!r}, {pad_w!r}")
    if remove_center and (kernel_h % 2 == 0 or kernel_w % 2 == 0):
        raise ValueError(f"dcnv3_core: remove_center needs an odd kernel, got "
                         f"{kernel_h}x{kernel_w}")
    n, h, w, c = value.shape
    if group_channels is None:
        if c % group:
            raise ValueError(f"dcnv3_core: value has {c} channels, not divisible by "
                             f"group={group}")
        group_channels = c // group
    if group * group_channels != c:
        raise ValueError(f"dcnv3_core: value has {c} channels but group·group_channels = "
                         f"{group}·{group_channels} = {group * group_channels}")
    num_points = kernel_h * kernel_w - int(bool(remove_center))
    ho = dcn_output_size(h, kernel_h, stride_h, pad_h, dilation_h)
    wo = dcn_output_size(w, kernel_w, stride_w, pad_w, dilation_w)
    if ho < 1 or wo < 1:
        raise ValueError(f"dcnv3_core: a {kernel_h}x{kernel_w} kernel (dilation "
                         f"{dilation_h}x{dilation_w}, padding {pad_h}x{pad_w}) does not fit "
                         f"a {h}x{w} input")
    want_off, want_mask = (n, ho, wo, group * num_points * 2), (n, ho, wo, group * num_points)
    if tuple(offset.shape) != want_off:
        raise ValueError(f"dcnv3_core: offset must have shape {want_off} (N, Ho, Wo, "
                         f"group·points·2), got {tuple(offset.shape)}")
    if tuple(mask.shape) != want_mask:
        raise ValueError(f"dcnv3_core: mask must have shape {want_mask} (N, Ho, Wo, "
                         f"group·points), got {tuple(mask.shape)}")
    if n == 0:
        return value.new_zeros(0, ho, wo, c)
    args = (int(kernel_h), int(kernel_w), int(stride_h), int(stride_w), int(pad_h), int(pad_w),
            int(dilation_h), int(dilation_w), int(group), int(group_channels),
            float(offset_scale), bool(remove_center))
    return _dcnv3_op(value, offset, mask, *args)


def unpack_offset_mask(offset_mask: Tensor, group: int, num_points: int) -> tuple[Tensor, Tensor]:
    """Split DCNv4's packed ``(N, H, W, ≥ G·3P)`` tensor into ``dcnv3_core``'s offset and mask.

    Per position, group ``g`` occupies ``[g·3P, (g+1)·3P)``: ``2P`` offsets (x, y
    interleaved per point), then ``P`` mask values; channels after ``G·3P`` (padding to a
    multiple of 8) are ignored.
    """
    need = group * 3 * num_points
    if offset_mask.dim() != 4 or offset_mask.shape[-1] < need:
        raise ValueError(f"offset_mask must be (N, H, W, >= {need}) for group={group}, "
                         f"{num_points} points, got {tuple(offset_mask.shape)}")
    om = offset_mask[..., :need].unflatten(-1, (group, 3 * num_points))
    offset = om[..., : 2 * num_points].flatten(-2)
    mask = om[..., 2 * num_points:].flatten(-2)
    return offset, mask
