"""Shared computational primitive of the dynamic convolutions: a per-sample kernel mix.

``aggregated_conv2d(x, pi, weight, bias)`` computes, for every sample ``b``,

    y[b] = conv(x[b], Σ_k pi[b, k, :] ⊙ weight[k]) + Σ_k pi[b, k, :] ⊙ bias[k]

as one grouped convolution over the batch (sample ``b``'s channels are groups
``b·g … b·g+g-1``). It is a custom autograd function because the naive autograd graph
is both slow and memory-hungry:

* it would *save* the aggregated kernels, ``B·O·C/g·kh·kw`` values, for backward. For
  late layers that is several times the activation (``C·kh·kw > H'·W'``); here only
  ``x``, ``pi`` and ``weight`` are saved and the kernels are recomputed in backward
  (``B·K·O·C/g·kh·kw`` multiply-adds, ~``K/(H'·W')`` of the convolution itself);
* autograd through ``einsum('bko,kom->bom')`` lowers to batched GEMMs with an inner
  dimension of ``K``, which CPU BLAS runs an order of magnitude below memory speed; the
  forward mix here is ``K`` fused multiply-adds, and the two backward contractions are
  batched GEMMs over contiguous operands.

Under autocast the convolution runs in the autocast dtype and the mixing in the
parameters' dtype, in forward and backward alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["aggregated_conv2d", "mix_kernels"]


def mix_kernels(pi: Tensor, weight: Tensor) -> Tensor:
    """``Σ_k pi[:, k, :, None] * weight[k]``: ``(B, K, O)``, ``(K, O, m)`` → ``(B, O, m)``."""
    out = pi[:, 0, :, None] * weight[0]
    for k in range(1, weight.shape[0]):
        out.addcmul_(pi[:, k, :, None], weight[k])
    return out


def _compute_dtype(x: Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class _AggregatedConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pi, weight, bias, stride, padding, dilation, groups):
        b, c, h, w = x.shape
        k, o = weight.shape[:2]
        cdt = _compute_dtype(x)
        pi_w = pi.to(weight.dtype)
        kernels = mix_kernels(pi_w, weight.reshape(k, o, -1))
        agg_bias = None if bias is None else torch.einsum("bko,ko->bo", pi_w, bias)
        with torch.autocast(x.device.type, enabled=False):
            y = F.conv2d(
                x.reshape(1, b * c, h, w).to(cdt),
                kernels.view(b * o, *weight.shape[2:]).to(cdt),
                None if agg_bias is None else agg_bias.reshape(-1).to(cdt),
                stride, padding, dilation, b * groups,
            )
        ctx.save_for_backward(x, pi, weight, bias)
        ctx.conf = (stride, padding, dilation, groups, cdt)
        return y.view(b, o, *y.shape[2:])

    @staticmethod
    def backward(ctx, grad_y):
        x, pi, weight, bias = ctx.saved_tensors
        stride, padding, dilation, groups, cdt = ctx.conf
        b, c, h, w = x.shape
        k, o = weight.shape[:2]
        pi_w = pi.to(weight.dtype)
        kernels = mix_kernels(pi_w, weight.reshape(k, o, -1))
        grad_x, grad_kernels, _ = torch.ops.aten.convolution_backward(
            grad_y.reshape(1, b * o, *grad_y.shape[2:]).to(cdt),
            x.reshape(1, b * c, h, w).to(cdt),
            kernels.view(b * o, *weight.shape[2:]).to(cdt),
            None, list(stride), list(padding), list(dilation), False, [0, 0], b * groups,
            [ctx.needs_input_grad[0], True, False],
        )
        # (B, O, m) -> (O, B, m) once, so both contractions are contiguous batched GEMMs.
        g_t = grad_kernels.view(b, o, -1).to(weight.dtype).transpose(0, 1).contiguous()
        w_t = weight.reshape(k, o, -1).permute(1, 2, 0).contiguous()  # (O, m, K)
        grad_pi = torch.bmm(g_t, w_t).permute(1, 2, 0)  # (B, K, O)
        grad_weight = torch.bmm(pi_w.permute(2, 1, 0).contiguous(), g_t)  # (O, K, m)
        grad_weight = grad_weight.transpose(0, 1).reshape(weight.shape)
        grad_bias = None
        if bias is not None:
            grad_agg_bias = grad_y.sum((2, 3)).to(bias.dtype)  # (B, O)
            grad_pi = grad_pi + grad_agg_bias[:, None, :] * bias
            if ctx.needs_input_grad[3]:
                grad_bias = torch.einsum("bko,bo->ko", pi_w, grad_agg_bias)
        grad_x = None if grad_x is None else grad_x.view(b, c, h, w).to(x.dtype)
        return (grad_x, grad_pi.to(pi.dtype), grad_weight, grad_bias,
                None, None, None, None)


def aggregated_conv2d(
    x: Tensor,
    pi: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> Tensor:
    """Convolve each sample with its own mixture of ``K`` kernels.

    Args:
        x: ``(B, C, H, W)``.
        pi: ``(B, K, O)`` mixing weights (per sample, kernel and output channel; a
            per-kernel weight is ``pi[:, :, None].expand(-1, -1, O)``).
        weight: ``(K, O, C/groups, kh, kw)``.
        bias: ``(K, O)`` or ``None``.

    Returns:
        ``(B, O, H', W')``.
    """
    return _AggregatedConv2d.apply(x, pi, weight, bias, tuple(stride), tuple(padding),
                                   tuple(dilation), groups)
