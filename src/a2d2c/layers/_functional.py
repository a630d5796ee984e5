"""Shared computational primitive of the dynamic convolutions: a per-sample kernel mix.

``aggregated_conv2d(x, pi, weight, bias)`` computes, for every sample ``b``,

    y[b] = conv(x[b], Σ_k pi[b, k, :] ⊙ weight[k]) + Σ_k pi[b, k, :] ⊙ bias[k]

by one of two exact methods: ``"grouped"``, one grouped convolution over the batch
(sample ``b``'s channels are groups ``b·g … b·g+g-1``), or ``"unfold"``, im2col followed
by one batched GEMM per sample and group (no attribute depends on the batch size, so a
traced graph serves every batch). It is a custom autograd function because the naive
autograd graph is both slow and memory-hungry:

* it would *save* the aggregated kernels, ``B·O·C/g·kh·kw`` values, for backward. For
  late layers that is several times the activation (``C·kh·kw > H'·W'``); here only
  ``x``, ``pi`` and ``weight`` are saved and the kernels are recomputed in backward
  (``B·K·O·C/g·kh·kw`` multiply-adds, ~``K/(H'·W')`` of the convolution itself);
* autograd through ``einsum('bko,kom->bom')`` lowers to batched GEMMs with an inner
  dimension of ``K``, which CPU BLAS runs an order of magnitude below memory speed; the
  forward mix here is ``K`` cache-blocked multiply-adds, and the two backward
  contractions are batched GEMMs on a strided view, oriented so that ``K`` is never
  the GEMM's narrow output dimension.

Under autocast the convolution runs in the autocast dtype and the mixing in the
parameters' dtype, in forward and backward alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["aggregated_conv2d", "mix_kernels"]


def mix_kernels(pi: Tensor, weight: Tensor, block_bytes: int = 1 << 21) -> Tensor:
    """``Σ_k pi[:, k, :, None] * weight[k]``: ``(B, K, O)``, ``(K, O, m)`` → ``(B, O, m)``.

    Without autograd (it writes into a preallocated output). The ``K`` multiply-adds run
    over blocks of output channels of about ``block_bytes`` (all samples), so each block
    stays in cache across the ``K`` passes and every weight row is read once: on 2 CPU
    threads 1.5× faster than whole-tensor passes for the 75M-value kernels of a CIFAR
    ResNet-18's last stage at batch 32. Same operations, same order: bit-identical.
    """
    b, k = pi.shape[:2]
    o, m = weight.shape[1], weight.shape[2]
    out = torch.empty(b, o, m, dtype=torch.promote_types(pi.dtype, weight.dtype),
                      device=weight.device)
    step = max(1, block_bytes // max(1, b * m * out.element_size()))
    p = pi.unsqueeze(-1)  # (B, K, O, 1)
    for start in range(0, o, step):
        block, stop = out[:, start:start + step], start + step
        torch.mul(p[:, 0, start:stop], weight[0, start:stop], out=block)
        for j in range(1, k):
            block.addcmul_(p[:, j, start:stop], weight[j, start:stop])
    return out


def _mix_kernels_differentiable(pi: Tensor, weight: Tensor) -> Tensor:
    out = pi[:, 0, :, None] * weight[0]
    for k in range(1, weight.shape[0]):
        out = out + pi[:, k, :, None] * weight[k]
    return out


def _compute_dtype(x: Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _mix_bias(pi_w: Tensor, bias: Tensor | None) -> Tensor | None:
    return None if bias is None else torch.einsum("bko,ko->bo", pi_w, bias)


def _unfold(x: Tensor, kernel_size, stride, padding, dilation) -> Tensor:
    return F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)


def _conv_grouped(x, kernels, agg_bias, kernel_size, stride, padding, dilation, groups):
    """Forward of the grouped method: one conv with ``B·groups`` groups."""
    b, c, h, w = x.shape
    o = kernels.shape[1]
    y = F.conv2d(x.reshape(1, b * c, h, w), kernels.view(b * o, c // groups, *kernel_size),
                 None if agg_bias is None else agg_bias.reshape(-1),
                 stride, padding, dilation, b * groups)
    return y.view(b, o, *y.shape[2:])


def _conv_unfold(x, kernels, agg_bias, kernel_size, stride, padding, dilation, groups):
    """Forward of the unfold method: im2col, then one batched GEMM per (sample, group)."""
    b = x.shape[0]
    o, m = kernels.shape[1], kernels.shape[2]
    cols = _unfold(x, kernel_size, stride, padding, dilation)  # (B, C·kh·kw, L)
    length = cols.shape[-1]
    y = torch.matmul(kernels.view(b, groups, o // groups, m),
                     cols.view(b, groups, m, length)).view(b, o, length)
    if agg_bias is not None:
        y = y + agg_bias.unsqueeze(-1)
    out_h, out_w = _out_size(x.shape[2:], kernel_size, stride, padding, dilation)
    return y.view(b, o, out_h, out_w)


def _out_size(size, kernel_size, stride, padding, dilation) -> tuple[int, int]:
    return tuple((s + 2 * p - d * (k - 1) - 1) // st + 1
                 for s, k, st, p, d in zip(size, kernel_size, stride, padding, dilation,
                                           strict=True))


_CONV_METHODS = {"grouped": _conv_grouped, "unfold": _conv_unfold}


class _AggregatedConv2d(torch.autograd.Function):
    """Exact per-sample kernel mix; saves ``x``, ``pi`` and the base kernels only.

    ``method`` is ``"grouped"`` (one grouped convolution with ``B·groups`` groups) or
    ``"unfold"`` (im2col + batched GEMM, the im2col recomputed in backward).
    """

    @staticmethod
    def forward(ctx, x, pi, weight, bias, stride, padding, dilation, groups, method):
        k, o = weight.shape[:2]
        cdt = _compute_dtype(x)
        pi_w = pi.to(weight.dtype)
        kernels = mix_kernels(pi_w, weight.reshape(k, o, -1))
        agg_bias = _mix_bias(pi_w, bias)
        with torch.autocast(x.device.type, enabled=False):
            y = _CONV_METHODS[method](
                x.to(cdt), kernels.to(cdt), None if agg_bias is None else agg_bias.to(cdt),
                weight.shape[3:], stride, padding, dilation, groups)
        ctx.save_for_backward(x, pi, weight, bias)
        ctx.conf = (stride, padding, dilation, groups, cdt, method)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, pi, weight, bias = ctx.saved_tensors
        stride, padding, dilation, groups, cdt, method = ctx.conf
        b, c, h, w = x.shape
        k, o = weight.shape[:2]
        ksize = tuple(weight.shape[3:])
        pi_w = pi.to(weight.dtype)
        kernels = mix_kernels(pi_w, weight.reshape(k, o, -1))  # recomputed, never saved
        need_x = ctx.needs_input_grad[0]
        if method == "grouped":
            grad_x, grad_kernels, _ = torch.ops.aten.convolution_backward(
                grad_y.reshape(1, b * o, *grad_y.shape[2:]).to(cdt),
                x.reshape(1, b * c, h, w).to(cdt),
                kernels.view(b * o, c // groups, *ksize).to(cdt),
                None, list(stride), list(padding), list(dilation), False, [0, 0], b * groups,
                [need_x, True, False],
            )
            grad_x = None if grad_x is None else grad_x.view(b, c, h, w)
        else:
            m = kernels.shape[2]
            cols = _unfold(x.to(cdt), ksize, stride, padding, dilation)
            length = cols.shape[-1]
            gy = grad_y.reshape(b, groups, o // groups, length).to(cdt)
            grad_kernels = torch.matmul(gy, cols.view(b, groups, m, length).transpose(2, 3))
            grad_x = None
            if need_x:
                grad_cols = torch.matmul(kernels.to(cdt).view(b, groups, o // groups, m)
                                         .transpose(2, 3), gy)
                grad_x = F.fold(grad_cols.view(b, groups * m, length), (h, w), ksize,
                                dilation=dilation, padding=padding, stride=stride)
        # Both contractions are batched over O on a strided (O, B, m) view of the kernel
        # gradient (no copy; BLAS takes the row stride), shaped so that K=4 is never GEMM's
        # N: grad_pi as (K×m)·(m×B) runs 15x faster on CPU than (B×m)·(m×K).
        g_t = grad_kernels.reshape(b, o, -1).to(weight.dtype).transpose(0, 1)  # (O, B, m)
        w_o = weight.reshape(k, o, -1).transpose(0, 1).contiguous()  # (O, K, m), small
        grad_pi = torch.bmm(w_o, g_t.transpose(1, 2)).permute(2, 1, 0)  # (O, K, B) -> (B, K, O)
        grad_weight = torch.bmm(pi_w.permute(2, 1, 0).contiguous(), g_t)  # (O, K, m)
        grad_weight = grad_weight.transpose(0, 1).reshape(weight.shape)
        grad_bias = None
        if bias is not None:
            grad_agg_bias = grad_y.sum((2, 3)).to(bias.dtype)  # (B, O)
            grad_pi = grad_pi + grad_agg_bias[:, None, :] * bias
            if ctx.needs_input_grad[3]:
                grad_bias = torch.einsum("bko,bo->ko", pi_w, grad_agg_bias)
        grad_x = None if grad_x is None else grad_x.to(x.dtype)
        return (grad_x, grad_pi.to(pi.dtype), grad_weight, grad_bias,
                None, None, None, None, None)


def _aggregated_conv2d_traceable(x, pi, weight, bias, stride, padding, dilation, groups,
                                 method):
    """The same function in plain differentiable ops, for ``torch.compile`` and export.

    No custom autograd: graph capture sees ordinary ATen ops (and ``method="unfold"``
    has no batch-dependent attribute, so one graph serves every batch size).
    """
    k, o = weight.shape[:2]
    cdt = _compute_dtype(x)
    pi_w = pi.to(weight.dtype)
    kernels = _mix_kernels_differentiable(pi_w, weight.reshape(k, o, -1))
    agg_bias = _mix_bias(pi_w, bias)
    with torch.autocast(x.device.type, enabled=False):
        return _CONV_METHODS[method](
            x.to(cdt), kernels.to(cdt), None if agg_bias is None else agg_bias.to(cdt),
            weight.shape[3:], stride, padding, dilation, groups)


def aggregated_conv2d(
    x: Tensor,
    pi: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    method: str = "grouped",
    traceable: bool = False,
) -> Tensor:
    """Convolve each sample with its own mixture of ``K`` kernels.

    Args:
        x: ``(B, C, H, W)``.
        pi: ``(B, K, O)`` mixing weights (per sample, kernel and output channel; a
            per-kernel weight is ``pi[:, :, None].expand(-1, -1, O)``).
        weight: ``(K, O, C/groups, kh, kw)``.
        bias: ``(K, O)`` or ``None``.

        method: ``"grouped"`` (one convolution with ``B·groups`` groups) or ``"unfold"``
            (im2col + batched GEMM; no batch-dependent attribute, so it traces once for
            every batch size).
        traceable: use plain differentiable ops instead of the memory-saving custom
            autograd function (for ``torch.compile`` and ONNX export).

    Returns:
        ``(B, O, H', W')``.
    """
    if method not in _CONV_METHODS:
        raise ValueError(f"method must be one of {tuple(_CONV_METHODS)}, got {method!r}")
    args = (x, pi, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups, method)
    if traceable:
        return _aggregated_conv2d_traceable(*args)
    return _AggregatedConv2d.apply(*args)
