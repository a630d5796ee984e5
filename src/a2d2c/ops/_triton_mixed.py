"""Triton kernels of :func:`a2d2c.ops.mixed_conv2d` (``impl="triton"`` and
``impl="triton_plus"``), SPEC §5.

Imported only when a Triton path is asked for; nothing else depends on triton.

The kernel form (``impl="triton"``): three implicit-GEMM kernels, one program per
(sample, block of rows, block of columns, group). The per-sample kernel
``W̃[b] = s_out ⊙ s_in ⊙ Σ_k a[b,k] ⊙ W_k`` is never stored: each program forms its
weight tile from the ``K`` base-kernel tiles and the coefficients in registers, right
before the ``tl.dot``.

* ``_fwd``: ``y[b, o, p] = Σ_{c,t} x[b, c, p ⊕ t] · W̃[b, o, c, t]`` (rows: output
  positions ``p``; columns: output channels; reduction: ``(c, t)``).
* ``_bwd_input``: ``∂x[b, c, q] = Σ_{o,t} ∂y[b, o, (q - t)/s] · W̃[b, o, c, t]`` (rows: input
  positions; columns: input channels; reduction: ``(o, t)``; taps whose output position is
  not on the stride grid are masked).
* ``_bwd_kernel``: ``∂W̃[b, o, c, t] = Σ_p ∂y[b, o, p] · x[b, c, p ⊕ t]`` (rows: output
  channels; columns: ``(c, t)``; reduction: output positions). The base-kernel,
  coefficient and scale gradients follow from ``∂W̃`` by the small contractions that the
  torch paths use too (:func:`a2d2c.ops.mixed_conv._kernel_space_grads`).

Tensors are addressed through their strides, so channels_last inputs need no copy; the
output is allocated in the input's memory format. fp32 runs the dots in IEEE fp32
(exact to float tolerance, no TF32); fp16 and bf16 run them in the input dtype with fp32
accumulation. Under ``TRITON_INTERPRET=1`` (CPU tensors, the CI tests) a single
autotune config is used (the interpreter cannot benchmark several) and bf16 dots are cast
to fp32 (the interpreter's bf16 ``tl.dot`` is wrong).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["triton_backward", "triton_forward", "triton_plus_backward", "triton_plus_forward"]

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
# A2D2C_TRITON_AUTOTUNE=0: one config per kernel (the GPU tests: no tuning time per shape)
_AUTOTUNE = os.environ.get("A2D2C_TRITON_AUTOTUNE", "1") != "0"


def _configs(gpu: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}, num_warps=1)]
    if not _AUTOTUNE:
        gpu = gpu[:1]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w)
            for m, n, k, w in gpu]


_FWD_CONFIGS = [(64, 64, 32, 4), (128, 64, 32, 4), (64, 32, 32, 4), (32, 32, 32, 2),
                (128, 128, 32, 8)]


@triton.jit
def _tap_input(oy, ox, t, H, W, SH, SW, PH, PW, DH, DW, KW: tl.constexpr):
    """Input pixel read by output position ``(oy, ox)`` (rows) at tap ``t`` (columns), and
    whether it lies inside the (zero-padded) input."""
    iy = oy[:, None] * SH - PH + (t // KW)[None, :] * DH
    ix = ox[:, None] * SW - PW + (t % KW)[None, :] * DW
    return iy, ix, (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)


@triton.jit
def _tap_output(iy, ix, t, HO, WO, SH, SW, PH, PW, DH, DW, KW: tl.constexpr):
    """Output position that reads input pixel ``(iy, ix)`` (rows) at tap ``t`` (columns),
    and whether there is one (on the stride grid, inside the output)."""
    ny = iy[:, None] + PH - (t // KW)[None, :] * DH
    nx = ix[:, None] + PW - (t % KW)[None, :] * DW
    ok = (ny >= 0) & (nx >= 0)
    ny = tl.where(ok, ny, 0)
    nx = tl.where(ok, nx, 0)
    oy = ny // SH
    ox = nx // SW
    return oy, ox, ok & (oy * SH == ny) & (ox * SW == nx) & (oy < HO) & (ox < WO)


@triton.autotune(configs=_configs(_FWD_CONFIGS), key=["CG", "OG", "HO", "WO", "K"])
@triton.jit
def _fwd(x_ptr, w_ptr, a_ptr, sin_ptr, sout_ptr, bias_ptr, y_ptr,
         H, W, HO, WO, CG, OG, K,
         sxb, sxc, sxh, sxw, swk, swo, swc, swt, sab, sak, sao, sat,
         sib, sic, sob, soo, sbb, sbo, syb, syo, syh, syw,
         SH, SW, PH, PW, DH, DW,
         KH: tl.constexpr, KW: tl.constexpr, HAS_IN: tl.constexpr, HAS_OUT: tl.constexpr,
         HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    npos = HO * WO
    nmb = tl.cdiv(npos, BLOCK_M)
    b = pid_m // nmb
    offs_m = (pid_m % nmb) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < npos
    n_mask = offs_n < OG
    oy = offs_m // WO
    ox = offs_m % WO
    o_abs = g * OG + offs_n
    T = KH * KW
    R = CG * T
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_K):
        offs_r = r0 + tl.arange(0, BLOCK_K)
        r_mask = offs_r < R
        c = offs_r // T
        t = offs_r % T
        iy, ix, inside = _tap_input(oy, ox, t, H, W, SH, SW, PH, PW, DH, DW, KW)
        xm = m_mask[:, None] & r_mask[None, :] & inside
        c_abs = g * CG + c
        xv = tl.load(x_ptr + b * sxb + c_abs[None, :] * sxc + iy * sxh + ix * sxw, mask=xm,
                     other=0.0)
        wm = r_mask[:, None] & n_mask[None, :]
        wt = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        for k in range(0, K):  # the K-kernel mix, in registers
            wv = tl.load(w_ptr + k * swk + o_abs[None, :] * swo + c[:, None] * swc
                         + t[:, None] * swt, mask=wm, other=0.0)
            av = tl.load(a_ptr + b * sab + k * sak + o_abs[None, :] * sao + t[:, None] * sat,
                         mask=wm, other=0.0)
            wt += av.to(tl.float32) * wv.to(tl.float32)
        if HAS_IN:
            s = tl.load(sin_ptr + b * sib + c_abs * sic, mask=r_mask, other=0.0)
            wt = wt * s.to(tl.float32)[:, None]
        if DOT_F32:
            acc += tl.dot(xv.to(tl.float32), wt, input_precision="ieee")
        else:
            acc += tl.dot(xv, wt.to(xv.dtype))
    if HAS_OUT:
        so = tl.load(sout_ptr + b * sob + o_abs * soo, mask=n_mask, other=0.0)
        acc = acc * so.to(tl.float32)[None, :]
    if HAS_BIAS:
        bv = tl.load(bias_ptr + b * sbb + o_abs * sbo, mask=n_mask, other=0.0)
        acc = acc + bv.to(tl.float32)[None, :]
    ym = m_mask[:, None] & n_mask[None, :]
    tl.store(y_ptr + b * syb + o_abs[None, :] * syo + oy[:, None] * syh + ox[:, None] * syw,
             acc.to(y_ptr.dtype.element_ty), mask=ym)


@triton.autotune(configs=_configs(_FWD_CONFIGS), key=["CG", "OG", "H", "W", "K"])
@triton.jit
def _bwd_input(gy_ptr, w_ptr, a_ptr, sin_ptr, sout_ptr, gx_ptr,
               H, W, HO, WO, CG, OG, K,
               sgb, sgo, sgh, sgw, swk, swo, swc, swt, sab, sak, sao, sat,
               sib, sic, sob, soo, sxb, sxc, sxh, sxw,
               SH, SW, PH, PW, DH, DW,
               KH: tl.constexpr, KW: tl.constexpr, HAS_IN: tl.constexpr,
               HAS_OUT: tl.constexpr, DOT_F32: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    npix = H * W
    nmb = tl.cdiv(npix, BLOCK_M)
    b = pid_m // nmb
    offs_m = (pid_m % nmb) * BLOCK_M + tl.arange(0, BLOCK_M)  # input positions
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # input channels of group g
    m_mask = offs_m < npix
    n_mask = offs_n < CG
    iy = offs_m // W
    ix = offs_m % W
    c_abs = g * CG + offs_n
    T = KH * KW
    R = OG * T
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_K):
        offs_r = r0 + tl.arange(0, BLOCK_K)
        r_mask = offs_r < R
        o = offs_r // T
        t = offs_r % T
        oy, ox, ok = _tap_output(iy, ix, t, HO, WO, SH, SW, PH, PW, DH, DW, KW)
        gm = m_mask[:, None] & r_mask[None, :] & ok
        o_abs = g * OG + o
        gv = tl.load(gy_ptr + b * sgb + o_abs[None, :] * sgo + oy * sgh + ox * sgw, mask=gm,
                     other=0.0)
        wm = r_mask[:, None] & n_mask[None, :]
        wt = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        for k in range(0, K):
            wv = tl.load(w_ptr + k * swk + o_abs[:, None] * swo + offs_n[None, :] * swc
                         + t[:, None] * swt, mask=wm, other=0.0)
            av = tl.load(a_ptr + b * sab + k * sak + o_abs[:, None] * sao + t[:, None] * sat,
                         mask=r_mask[:, None], other=0.0)
            wt += av.to(tl.float32) * wv.to(tl.float32)
        if HAS_OUT:
            so = tl.load(sout_ptr + b * sob + o_abs * soo, mask=r_mask, other=0.0)
            wt = wt * so.to(tl.float32)[:, None]
        if DOT_F32:
            acc += tl.dot(gv.to(tl.float32), wt, input_precision="ieee")
        else:
            acc += tl.dot(gv, wt.to(gv.dtype))
    if HAS_IN:
        s = tl.load(sin_ptr + b * sib + c_abs * sic, mask=n_mask, other=0.0)
        acc = acc * s.to(tl.float32)[None, :]
    xm = m_mask[:, None] & n_mask[None, :]
    tl.store(gx_ptr + b * sxb + c_abs[None, :] * sxc + iy[:, None] * sxh + ix[:, None] * sxw,
             acc.to(gx_ptr.dtype.element_ty), mask=xm)


@triton.autotune(configs=_configs([(64, 64, 32, 4), (32, 64, 64, 4), (64, 128, 32, 8),
                                   (32, 32, 64, 2)]),
                 key=["CG", "OG", "HO", "WO"])
@triton.jit
def _bwd_kernel(gy_ptr, x_ptr, gk_ptr, H, W, HO, WO, CG, OG, G,
                sgb, sgo, sgh, sgw, sxb, sxc, sxh, sxw,
                SH, SW, PH, PW, DH, DW,
                KH: tl.constexpr, KW: tl.constexpr, DOT_F32: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_bg = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_n = tl.program_id(2)
    b = pid_bg // G
    g = pid_bg % G
    T = KH * KW
    R = CG * T
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output channels of group g
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (c, t)
    m_mask = offs_m < OG
    n_mask = offs_n < R
    o_abs = g * OG + offs_m
    c_abs = g * CG + offs_n // T
    t = offs_n % T
    npos = HO * WO
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for p0 in range(0, npos, BLOCK_K):
        offs_p = p0 + tl.arange(0, BLOCK_K)
        p_mask = offs_p < npos
        oy = offs_p // WO
        ox = offs_p % WO
        gv = tl.load(gy_ptr + b * sgb + o_abs[:, None] * sgo + oy[None, :] * sgh
                     + ox[None, :] * sgw, mask=m_mask[:, None] & p_mask[None, :], other=0.0)
        iy, ix, inside = _tap_input(oy, ox, t, H, W, SH, SW, PH, PW, DH, DW, KW)
        xm = p_mask[:, None] & n_mask[None, :] & inside
        xv = tl.load(x_ptr + b * sxb + c_abs[None, :] * sxc + iy * sxh + ix * sxw, mask=xm,
                     other=0.0)
        if DOT_F32:
            acc += tl.dot(gv.to(tl.float32), xv.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(gv, xv)
    base = gk_ptr + b * (G * OG * R) + o_abs[:, None] * R + offs_n[None, :]
    tl.store(base, acc, mask=m_mask[:, None] & n_mask[None, :])


def _check_device(x: Tensor, impl: str = "triton") -> None:
    if x.device.type != "cuda" and not _INTERPRET:
        raise ValueError(
            f"mixed_conv2d: impl={impl!r} needs CUDA tensors (or TRITON_INTERPRET=1 for CPU "
            f"tests), got a tensor on {x.device}; use impl='auto' on this device")


def _dot_f32(dtype: torch.dtype) -> bool:
    return dtype == torch.float32 or (_INTERPRET and dtype == torch.bfloat16)


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _a_full(a: Tensor, out_channels: int, taps: int) -> Tensor:
    return a.expand(a.shape[0], a.shape[1], out_channels, taps)


def triton_forward(x: Tensor, weight: Tensor, a: Tensor, in_scale: Tensor | None,
                   out_scale: Tensor | None, bias: Tensor | None, conf: tuple) -> Tensor:
    """``y`` of the kernel form; ``weight (K, O, Cg, kh, kw)``, ``a (B, K, Oa, Ta)``."""
    _check_device(x)
    stride, padding, dilation, groups = conf[:4]
    b, _, h, w = x.shape
    k, o, cg, kh, kw = weight.shape
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    w4 = weight.reshape(k, o, cg, kh * kw)
    af = _a_full(a, o, kh * kw)
    y = torch.empty(b, o, ho, wo, dtype=x.dtype, device=x.device,
                    memory_format=_memory_format(x))
    dummy = y
    si = in_scale if in_scale is not None else dummy.new_zeros(1, 1)
    so = out_scale if out_scale is not None else dummy.new_zeros(1, 1)
    bs = bias if bias is not None else dummy.new_zeros(1, 1)
    og = o // groups

    def grid(meta):
        return (b * triton.cdiv(ho * wo, meta["BLOCK_M"]), triton.cdiv(og, meta["BLOCK_N"]),
                groups)

    _fwd[grid](x, w4, af, si, so, bs, y, h, w, ho, wo, cg, og, k,
               *x.stride(), *w4.stride(), *af.stride(), *si.stride(), *so.stride(),
               *bs.stride(), *y.stride(), *stride, *padding, *dilation,
               KH=kh, KW=kw, HAS_IN=in_scale is not None, HAS_OUT=out_scale is not None,
               HAS_BIAS=bias is not None, DOT_F32=_dot_f32(x.dtype))
    return y


def triton_backward(grad_y: Tensor, x: Tensor, weight: Tensor, a: Tensor,
                    in_scale: Tensor | None, out_scale: Tensor | None, conf: tuple,
                    need_x: bool) -> tuple[Tensor | None, Tensor]:
    """``(∂x or None, ∂W̃ (B, O, Cg, kh·kw) in float32)``."""
    stride, padding, dilation, groups = conf[:4]
    b, c, h, w = x.shape
    k, o, cg, kh, kw = weight.shape
    ho, wo = grad_y.shape[2:]
    og = o // groups
    taps = kh * kw
    grad_y = grad_y.to(x.dtype)
    dot_f32 = _dot_f32(x.dtype)
    grad_x = None
    if need_x:
        w4 = weight.reshape(k, o, cg, taps)
        af = _a_full(a, o, taps)
        grad_x = torch.empty(b, c, h, w, dtype=x.dtype, device=x.device,
                             memory_format=_memory_format(x))
        si = in_scale if in_scale is not None else grad_x.new_zeros(1, 1)
        so = out_scale if out_scale is not None else grad_x.new_zeros(1, 1)

        def grid_x(meta):
            return (b * triton.cdiv(h * w, meta["BLOCK_M"]), triton.cdiv(cg, meta["BLOCK_N"]),
                    groups)

        _bwd_input[grid_x](grad_y, w4, af, si, so, grad_x, h, w, ho, wo, cg, og, k,
                           *grad_y.stride(), *w4.stride(), *af.stride(), *si.stride(),
                           *so.stride(), *grad_x.stride(), *stride, *padding, *dilation,
                           KH=kh, KW=kw, HAS_IN=in_scale is not None,
                           HAS_OUT=out_scale is not None, DOT_F32=dot_f32)
    grad_k = torch.empty(b, o, cg, taps, dtype=torch.float32, device=x.device)

    def grid_k(meta):
        return (b * groups, triton.cdiv(og, meta["BLOCK_M"]),
                triton.cdiv(cg * taps, meta["BLOCK_N"]))

    _bwd_kernel[grid_k](grad_y, x, grad_k, h, w, ho, wo, cg, og, groups,
                        *grad_y.stride(), *x.stride(), *stride, *padding, *dilation,
                        KH=kh, KW=kw, DOT_F32=dot_f32)
    return grad_x, grad_k


# --------------------------------------------------------------------------- plus form
# ``impl="triton_plus"``: for coefficients that do not depend on the tap,
# ``y[b, o] = s_out[b, o] · Σ_k a[b, k, o] · conv(s_in ⊙ x, W_k)[b, o] + b̃[b, o]``. The base
# kernels are shared by the batch, so a block of rows (output positions) may span several
# samples — on small maps (4² positions per sample) the kernel form's per-sample row blocks
# are mostly empty. Each of the K responses is contracted in registers and mixed into the
# output tile in the epilogue: the K·O feature maps of the torch plus form are never
# stored. Backward: the input gradient is one implicit GEMM over (k, o, t) with ∂y scaled
# by ``a · s_out`` as it is loaded; the base-kernel gradient is one GEMM per k over all
# (sample, position) pairs (split along them, partial sums added atomically); the
# coefficient gradient ``G[b, k, o] = Σ_p ∂y[b, o, p] · conv(s_in ⊙ x, W_k)[b, o, p]``
# recomputes the responses tile by tile (the forward kernel with ``GRAD``) and reduces
# them per sample on the spot.

@triton.autotune(configs=_configs(_FWD_CONFIGS), key=["CG", "OG", "HO", "WO", "K", "GRAD"],
                 reset_to_zero=["g_ptr"])
@triton.jit
def _plus_fwd(x_ptr, w_ptr, a_ptr, sin_ptr, sout_ptr, bias_ptr, y_ptr, gy_ptr, g_ptr,
              B, H, W, HO, WO, CG, OG, K,
              sxb, sxc, sxh, sxw, swk, swo, swc, swt, sab, sak, sao,
              sib, sic, sob, soo, sbb, sbo, syb, syo, syh, syw, sgb, sgk, sgo,
              SH, SW, PH, PW, DH, DW,
              KH: tl.constexpr, KW: tl.constexpr, HAS_IN: tl.constexpr, HAS_OUT: tl.constexpr,
              HAS_BIAS: tl.constexpr, GRAD: tl.constexpr, DOT_F32: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``GRAD=False``: ``y``. ``GRAD=True``: ``G[b, k, o] += Σ_p ∂y · response_k`` (atomic),
    ``y`` is not written (``y_ptr``: ``∂y``, read through the ``sy*`` strides)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    npos = HO * WO
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)  # (sample, output position) pairs
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < B * npos
    n_mask = offs_n < OG
    bm = offs_m // npos
    pm = offs_m % npos
    oy = pm // WO
    ox = pm % WO
    o_abs = g * OG + offs_n
    T = KH * KW
    R = CG * T
    mn_mask = m_mask[:, None] & n_mask[None, :]
    if GRAD:
        gyv = tl.load(gy_ptr + bm[:, None] * syb + o_abs[None, :] * syo + oy[:, None] * syh
                      + ox[:, None] * syw, mask=mn_mask, other=0.0).to(tl.float32)
    out = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K):
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for r0 in range(0, R, BLOCK_K):
            offs_r = r0 + tl.arange(0, BLOCK_K)
            r_mask = offs_r < R
            c = offs_r // T
            t = offs_r % T
            iy, ix, inside = _tap_input(oy, ox, t, H, W, SH, SW, PH, PW, DH, DW, KW)
            xm = m_mask[:, None] & r_mask[None, :] & inside
            c_abs = g * CG + c
            xv = tl.load(x_ptr + bm[:, None] * sxb + c_abs[None, :] * sxc + iy * sxh
                         + ix * sxw, mask=xm, other=0.0)
            if HAS_IN:
                s = tl.load(sin_ptr + bm[:, None] * sib + c_abs[None, :] * sic,
                            mask=m_mask[:, None] & r_mask[None, :], other=0.0)
                xv = (xv.to(tl.float32) * s.to(tl.float32)).to(xv.dtype)
            wv = tl.load(w_ptr + k * swk + o_abs[None, :] * swo + c[:, None] * swc
                         + t[:, None] * swt, mask=r_mask[:, None] & n_mask[None, :], other=0.0)
            if DOT_F32:
                acc += tl.dot(xv.to(tl.float32), wv.to(tl.float32), input_precision="ieee")
            else:
                acc += tl.dot(xv, wv.to(xv.dtype))
        if GRAD:
            prod = gyv * acc
            b_lo = m0 // npos
            b_hi = tl.minimum((m0 + BLOCK_M - 1) // npos, B - 1)
            for bb in range(b_lo, b_hi + 1):  # the samples this block of rows touches
                part = tl.sum(tl.where((bm == bb)[:, None], prod, 0.0), axis=0)
                tl.atomic_add(g_ptr + bb * sgb + k * sgk + o_abs * sgo, part, mask=n_mask)
        else:
            av = tl.load(a_ptr + bm[:, None] * sab + k * sak + o_abs[None, :] * sao,
                         mask=mn_mask, other=0.0)
            out += av.to(tl.float32) * acc
    if not GRAD:
        if HAS_OUT:
            so = tl.load(sout_ptr + bm[:, None] * sob + o_abs[None, :] * soo, mask=mn_mask,
                         other=0.0)
            out = out * so.to(tl.float32)
        if HAS_BIAS:
            bv = tl.load(bias_ptr + bm[:, None] * sbb + o_abs[None, :] * sbo, mask=mn_mask,
                         other=0.0)
            out = out + bv.to(tl.float32)
        tl.store(y_ptr + bm[:, None] * syb + o_abs[None, :] * syo + oy[:, None] * syh
                 + ox[:, None] * syw, out.to(y_ptr.dtype.element_ty), mask=mn_mask)


@triton.autotune(configs=_configs(_FWD_CONFIGS), key=["CG", "OG", "H", "W", "K"])
@triton.jit
def _plus_bwd_input(gy_ptr, w_ptr, a_ptr, sout_ptr, gx_ptr,
                    B, H, W, HO, WO, CG, OG, K,
                    sgb, sgo, sgh, sgw, swk, swo, swc, swt, sab, sak, sao, sob, soo,
                    sxb, sxc, sxh, sxw,
                    SH, SW, PH, PW, DH, DW,
                    KH: tl.constexpr, KW: tl.constexpr, HAS_OUT: tl.constexpr,
                    DOT_F32: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``∂(s_in ⊙ x)[b, c, q] = Σ_{k,o,t} (a[b,k,o] s_out[b,o] ∂y[b, o, (q - t)/s]) ·
    W_k[o, c, t]``."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    npix = H * W
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (sample, input position) pairs
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # input channels of group g
    m_mask = offs_m < B * npix
    n_mask = offs_n < CG
    bm = offs_m // npix
    pm = offs_m % npix
    iy = pm // W
    ix = pm % W
    c_abs = g * CG + offs_n
    T = KH * KW
    R = OG * T
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_K):
        offs_r = r0 + tl.arange(0, BLOCK_K)
        r_mask = offs_r < R
        o = offs_r // T
        t = offs_r % T
        oy, ox, ok = _tap_output(iy, ix, t, HO, WO, SH, SW, PH, PW, DH, DW, KW)
        mr_mask = m_mask[:, None] & r_mask[None, :]
        o_abs = g * OG + o
        gv = tl.load(gy_ptr + bm[:, None] * sgb + o_abs[None, :] * sgo + oy * sgh + ox * sgw,
                     mask=mr_mask & ok, other=0.0).to(tl.float32)
        if HAS_OUT:
            so = tl.load(sout_ptr + bm[:, None] * sob + o_abs[None, :] * soo, mask=mr_mask,
                         other=0.0)
            gv = gv * so.to(tl.float32)
        wm = r_mask[:, None] & n_mask[None, :]
        for k in range(0, K):  # one reduction over (k, o, t): ∂y is loaded once per block
            av = tl.load(a_ptr + bm[:, None] * sab + k * sak + o_abs[None, :] * sao,
                         mask=mr_mask, other=0.0)
            wv = tl.load(w_ptr + k * swk + o_abs[:, None] * swo + offs_n[None, :] * swc
                         + t[:, None] * swt, mask=wm, other=0.0)
            ga = gv * av.to(tl.float32)
            if DOT_F32:
                acc += tl.dot(ga, wv.to(tl.float32), input_precision="ieee")
            else:
                acc += tl.dot(ga.to(gx_ptr.dtype.element_ty), wv.to(gx_ptr.dtype.element_ty))
    tl.store(gx_ptr + bm[:, None] * sxb + c_abs[None, :] * sxc + iy[:, None] * sxh
             + ix[:, None] * sxw, acc.to(gx_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


@triton.autotune(configs=_configs([(64, 64, 32, 4), (32, 64, 64, 4), (64, 128, 32, 8),
                                   (32, 32, 64, 2)]),
                 key=["CG", "OG", "HO", "WO", "NSPLIT"], reset_to_zero=["gw_ptr"])
@triton.jit
def _plus_bwd_weight(gy_ptr, x_ptr, a_ptr, sin_ptr, sout_ptr, gw_ptr,
                     B, H, W, HO, WO, CG, OG, G, NSPLIT, SPLIT_LEN,
                     sgb, sgo, sgh, sgw, sxb, sxc, sxh, sxw, sab, sak, sao, sib, sic,
                     sob, soo, swk, swo, swr,
                     SH, SW, PH, PW, DH, DW,
                     KH: tl.constexpr, KW: tl.constexpr, HAS_IN: tl.constexpr,
                     HAS_OUT: tl.constexpr, DOT_F32: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``∂W_k[o, c, t] += Σ_{(b,p) in this split} a[b,k,o] s_out[b,o] ∂y[b,o,p] · s_in[b,c]
    x[b, c, p ⊕ t]`` (rows: output channels; columns: ``(c, t)``; the (sample, position)
    pairs are cut into ``NSPLIT`` runs of ``SPLIT_LEN``, whose partial sums add atomically)."""
    pid_0 = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_n = tl.program_id(2)
    split = pid_0 % NSPLIT
    k = (pid_0 // NSPLIT) // G
    g = (pid_0 // NSPLIT) % G
    T = KH * KW
    R = CG * T
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output channels of group g
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (c, t)
    m_mask = offs_m < OG
    n_mask = offs_n < R
    o_abs = g * OG + offs_m
    c_abs = g * CG + offs_n // T
    t = offs_n % T
    npos = HO * WO
    total = B * npos
    start = split * SPLIT_LEN
    stop = tl.minimum(start + SPLIT_LEN, total)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for p0 in range(start, stop, BLOCK_K):
        offs_p = p0 + tl.arange(0, BLOCK_K)  # (sample, output position) pairs
        p_mask = offs_p < stop
        bp = offs_p // npos
        pp = offs_p % npos
        oy = pp // WO
        ox = pp % WO
        mp_mask = m_mask[:, None] & p_mask[None, :]
        gv = tl.load(gy_ptr + bp[None, :] * sgb + o_abs[:, None] * sgo + oy[None, :] * sgh
                     + ox[None, :] * sgw, mask=mp_mask, other=0.0)
        av = tl.load(a_ptr + bp[None, :] * sab + k * sak + o_abs[:, None] * sao, mask=mp_mask,
                     other=0.0)
        gv = gv.to(tl.float32) * av.to(tl.float32)
        if HAS_OUT:
            so = tl.load(sout_ptr + bp[None, :] * sob + o_abs[:, None] * soo, mask=mp_mask,
                         other=0.0)
            gv = gv * so.to(tl.float32)
        iy, ix, inside = _tap_input(oy, ox, t, H, W, SH, SW, PH, PW, DH, DW, KW)
        xm = p_mask[:, None] & n_mask[None, :] & inside
        xv = tl.load(x_ptr + bp[:, None] * sxb + c_abs[None, :] * sxc + iy * sxh + ix * sxw,
                     mask=xm, other=0.0)
        if HAS_IN:
            s = tl.load(sin_ptr + bp[:, None] * sib + c_abs[None, :] * sic,
                        mask=p_mask[:, None] & n_mask[None, :], other=0.0)
            xv = (xv.to(tl.float32) * s.to(tl.float32)).to(xv.dtype)
        if DOT_F32:
            acc += tl.dot(gv, xv.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(gv.to(xv.dtype), xv)
    tl.atomic_add(gw_ptr + k * swk + o_abs[:, None] * swo + offs_n[None, :] * swr, acc,
                  mask=m_mask[:, None] & n_mask[None, :])


#: The base-kernel gradient of the plus form splits the (sample, position) pairs into runs
#: of a multiple of this many (every autotune BLOCK_K divides it) so that the grid holds
#: about :data:`_PLUS_TARGET_PROGRAMS` programs.
_PLUS_SPLIT_QUANTUM = 256
_PLUS_TARGET_PROGRAMS = 1024


def _plus_split(total: int, base_programs: int) -> tuple[int, int]:
    """``(number of splits, positions per split)`` for :func:`_plus_bwd_weight`."""
    runs = -(-total // _PLUS_SPLIT_QUANTUM)
    nsplit = max(1, min(runs, _PLUS_TARGET_PROGRAMS // max(1, base_programs)))
    length = -(-runs // nsplit) * _PLUS_SPLIT_QUANTUM
    return -(-total // length), length


def _plus_common(x: Tensor, weight: Tensor, a: Tensor, conf: tuple):
    stride, padding, dilation, groups = conf[:4]
    b, _, h, w = x.shape
    k, o, cg, kh, kw = weight.shape
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    w4 = weight.reshape(k, o, cg, kh * kw)
    a3 = a[..., 0].expand(b, k, o)  # tap-independent: (B, K, O)
    return b, h, w, ho, wo, k, o, cg, kh, kw, o // groups, w4, a3


def triton_plus_forward(x: Tensor, weight: Tensor, a: Tensor, in_scale: Tensor | None,
                        out_scale: Tensor | None, bias: Tensor | None, conf: tuple) -> Tensor:
    """``y`` of the plus form; ``a (B, K, Oa, 1)`` (independent of the tap)."""
    _check_device(x, "triton_plus")
    stride, padding, dilation, groups = conf[:4]
    b, h, w, ho, wo, k, o, cg, kh, kw, og, w4, a3 = _plus_common(x, weight, a, conf)
    y = torch.empty(b, o, ho, wo, dtype=x.dtype, device=x.device,
                    memory_format=_memory_format(x))
    si = in_scale if in_scale is not None else y.new_zeros(1, 1)
    so = out_scale if out_scale is not None else y.new_zeros(1, 1)
    bs = bias if bias is not None else y.new_zeros(1, 1)
    g3 = y.new_zeros(1, 1, 1, dtype=torch.float32)

    def grid(meta):
        return (triton.cdiv(b * ho * wo, meta["BLOCK_M"]), triton.cdiv(og, meta["BLOCK_N"]),
                groups)

    _plus_fwd[grid](x, w4, a3, si, so, bs, y, y, g3, b, h, w, ho, wo, cg, og, k,
                    *x.stride(), *w4.stride(), *a3.stride(), *si.stride(), *so.stride(),
                    *bs.stride(), *y.stride(), *g3.stride(), *stride, *padding, *dilation,
                    KH=kh, KW=kw, HAS_IN=in_scale is not None, HAS_OUT=out_scale is not None,
                    HAS_BIAS=bias is not None, GRAD=False, DOT_F32=_dot_f32(x.dtype))
    return y


def triton_plus_backward(grad_y: Tensor, x: Tensor, weight: Tensor, a: Tensor,
                         in_scale: Tensor | None, out_scale: Tensor | None, conf: tuple,
                         needs: Sequence[bool]
                         ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(∂(s_in ⊙ x), ∂W (K, O, Cg, kh·kw), G (B, K, O))`` as wanted (``needs``: input,
    base kernels, responses), the last two in float32; ``G[b, k, o] = Σ_p ∂y[b, o, p] ·
    conv(s_in ⊙ x, W_k)[b, o, p]``. The torch side turns them into the gradients of
    ``x``, ``s_in``, ``coeff`` and ``s_out``."""
    if (needs[1] or needs[2]) and torch.are_deterministic_algorithms_enabled():
        msg = ("mixed_conv2d: impl='triton_plus' adds the base-kernel and coefficient "
               "gradients with float32 atomics, which are not deterministic; use "
               "impl='triton' or 'kernel' with torch.use_deterministic_algorithms(True)")
        if not torch.is_deterministic_algorithms_warn_only_enabled():
            raise RuntimeError(msg)
        warnings.warn(msg, stacklevel=2)
    stride, padding, dilation, groups = conf[:4]
    b, h, w, ho, wo, k, o, cg, kh, kw, og, w4, a3 = _plus_common(x, weight, a, conf)
    taps = kh * kw
    grad_y = grad_y.to(x.dtype)
    dot_f32 = _dot_f32(x.dtype)
    zero = x.new_zeros(1, 1)
    si = in_scale if in_scale is not None else zero
    so = out_scale if out_scale is not None else zero
    grad_xs = grad_w = resp = None
    if needs[0]:
        grad_xs = torch.empty(b, groups * cg, h, w, dtype=x.dtype, device=x.device,
                              memory_format=_memory_format(x))

        def grid_x(meta):
            return (triton.cdiv(b * h * w, meta["BLOCK_M"]), triton.cdiv(cg, meta["BLOCK_N"]),
                    groups)

        _plus_bwd_input[grid_x](grad_y, w4, a3, so, grad_xs, b, h, w, ho, wo, cg, og, k,
                                *grad_y.stride(), *w4.stride(), *a3.stride(), *so.stride(),
                                *grad_xs.stride(), *stride, *padding, *dilation,
                                KH=kh, KW=kw, HAS_OUT=out_scale is not None, DOT_F32=dot_f32)
    if needs[1]:
        grad_w = torch.zeros(k, o, cg * taps, dtype=torch.float32, device=x.device)
        base = k * groups * triton.cdiv(og, 64) * triton.cdiv(cg * taps, 64)
        nsplit, split_len = _plus_split(b * ho * wo, base)

        def grid_w(meta):
            return (k * groups * nsplit, triton.cdiv(og, meta["BLOCK_M"]),
                    triton.cdiv(cg * taps, meta["BLOCK_N"]))

        _plus_bwd_weight[grid_w](grad_y, x, a3, si, so, grad_w, b, h, w, ho, wo, cg, og,
                                 groups, nsplit, split_len, *grad_y.stride(), *x.stride(),
                                 *a3.stride(), *si.stride(), *so.stride(), *grad_w.stride(),
                                 *stride, *padding, *dilation, KH=kh, KW=kw,
                                 HAS_IN=in_scale is not None, HAS_OUT=out_scale is not None,
                                 DOT_F32=dot_f32)
        grad_w = grad_w.view(k, o, cg, taps)
    if needs[2]:
        resp = torch.zeros(b, k, o, dtype=torch.float32, device=x.device)

        def grid_g(meta):
            return (triton.cdiv(b * ho * wo, meta["BLOCK_M"]), triton.cdiv(og, meta["BLOCK_N"]),
                    groups)

        _plus_fwd[grid_g](x, w4, a3, si, so, zero, grad_y, grad_y, resp, b, h, w, ho, wo, cg,
                          og, k, *x.stride(), *w4.stride(), *a3.stride(), *si.stride(),
                          *so.stride(), *zero.stride(), *grad_y.stride(), *resp.stride(),
                          *stride, *padding, *dilation, KH=kh, KW=kw,
                          HAS_IN=in_scale is not None, HAS_OUT=False, HAS_BIAS=False,
                          GRAD=True, DOT_F32=dot_f32)
    return grad_xs, grad_w, resp
