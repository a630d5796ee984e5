"""Triton kernels of :func:`a2d2c.ops.mixed_conv2d` (``impl="triton"``), SPEC §5.

Imported only when ``impl="triton"`` is asked for; nothing else depends on triton.

Three implicit-GEMM kernels, one program per (sample, block of rows, block of columns,
group). The per-sample kernel ``W̃[b] = s_out ⊙ s_in ⊙ Σ_k a[b,k] ⊙ W_k`` is never
stored: each program forms its weight tile from the ``K`` base-kernel tiles and the
coefficients in registers, right before the ``tl.dot``.

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

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["triton_backward", "triton_forward"]

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
        iy = oy[:, None] * SH - PH + (t // KW)[None, :] * DH
        ix = ox[:, None] * SW - PW + (t % KW)[None, :] * DW
        xm = (m_mask[:, None] & r_mask[None, :] & (iy >= 0) & (iy < H) & (ix >= 0)
              & (ix < W))
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
        ny = iy[:, None] + PH - (t // KW)[None, :] * DH
        nx = ix[:, None] + PW - (t % KW)[None, :] * DW
        ok = (ny >= 0) & (nx >= 0)
        ny = tl.where(ok, ny, 0)
        nx = tl.where(ok, nx, 0)
        oy = ny // SH
        ox = nx // SW
        ok = ok & (oy * SH == ny) & (ox * SW == nx) & (oy < HO) & (ox < WO)
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
        iy = oy[:, None] * SH - PH + (t // KW)[None, :] * DH
        ix = ox[:, None] * SW - PW + (t % KW)[None, :] * DW
        xm = (p_mask[:, None] & n_mask[None, :] & (iy >= 0) & (iy < H) & (ix >= 0)
              & (ix < W))
        xv = tl.load(x_ptr + b * sxb + c_abs[None, :] * sxc + iy * sxh + ix * sxw, mask=xm,
                     other=0.0)
        if DOT_F32:
            acc += tl.dot(gv.to(tl.float32), xv.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(gv, xv)
    base = gk_ptr + b * (G * OG * R) + o_abs[:, None] * R + offs_n[None, :]
    tl.store(base, acc, mask=m_mask[:, None] & n_mask[None, :])


def _check_device(x: Tensor) -> None:
    if x.device.type != "cuda" and not _INTERPRET:
        raise ValueError(
            "mixed_conv2d: impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU "
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
