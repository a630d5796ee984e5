"""``mixed_conv2d``: one per-sample mixed convolution for every dynamic layer (SPEC §5).

For every sample ``b`` (shapes below),

    y[b] = s_out[b] ⊙ conv(s_in[b] ⊙ x[b], W̃[b]) + b̃[b],
    W̃[b][o, c, i, j] = Σ_k a[b, k, o, i, j] · W_k[o, c, i, j],

with the coefficients ``a`` broadcast from a smaller shape: ``(B, K)`` (CondConv,
DynamicConv), ``(B, K, O)`` (A²D²C), ``(B, K, kh, kw)`` (ODConv's kernel × spatial
attention) or ``(B, K, O, kh, kw)`` with any of ``O, kh, kw`` of size 1.

Exact paths (``impl``):

``"kernel"``
    Mix one kernel per sample and run one grouped convolution over the batch (sample
    ``b``'s channels are groups ``b·g … b·g+g-1``). The scales are folded into the
    per-sample kernel (``conv(s_in ⊙ x, W) = conv(x, W ⊙ s_in)`` and likewise for
    ``s_out``), so nothing activation-sized is added.
``"unfold"``
    The same kernels, applied by im2col and one batched GEMM per (sample, group): no
    attribute depends on the batch size, so one traced graph serves every batch size.
``"plus"``
    ``Σ_k a_k ⊙ conv(x, W_k)``: one dense convolution with ``K·O`` outputs, then the
    responses are mixed. Exact only where ``a`` does not depend on the tap.
``"triton"``
    The kernel form as a fused Triton implicit-GEMM kernel (see
    :mod:`a2d2c.ops._triton_mixed`); CUDA tensors, or CPU under ``TRITON_INTERPRET=1``.
``"triton_plus"``
    The plus form as fused Triton kernels: each of the ``K`` responses is contracted in
    registers and mixed into the output tile, so the ``K·O`` feature maps are never
    stored, and a tile of output positions may span several samples (the kernel form's
    cannot: on small maps its tiles are mostly empty). Exact where ``a`` does not depend
    on the tap; CUDA tensors, or CPU under ``TRITON_INTERPRET=1``.
``"auto"``
    The cheapest exact path by the cost model of :mod:`a2d2c.ops.cost`; or, with
    benchmarking on (:func:`a2d2c.ops.tuning.set_benchmark`), the fastest measured on
    the first call of each shape (like ``torch.backends.cudnn.benchmark``).

The kernel, unfold and Triton paths are one custom autograd function that saves only
its inputs: never the ``B·O·C/g·kh·kw`` per-sample kernels (recomputed in backward for
``~K`` multiply-adds per element, well below the convolution) nor, for ``triton_plus``,
the ``K`` responses. Where the custom function cannot
serve, the same math runs in plain differentiable ops (the *composite* path): inside
``torch.compile``/ONNX export, under ``torch.func`` transforms (``vmap``, ``grad``,
``jacrev``), and in a backward pass that builds a graph (``create_graph=True``, double
backward), where the backward re-derives its gradients through the composite path.
``torch.jit.script`` is not supported (custom autograd functions and Python dispatch
cannot be scripted); use ``torch.compile`` or ``torch.export``.

Under autocast the convolution runs in the autocast dtype, the kernel mixing in the
parameters' dtype, in forward and backward alike.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import tuning
from .cost import choose_impl

__all__ = [
    "IMPLS",
    "PLUS_METHODS",
    "TRITON_IMPLS",
    "MixedCoeff",
    "canonical_coeff",
    "mix_kernels",
    "mix_responses",
    "mixed_conv2d",
    "per_sample_conv",
    "plus_method",
    "plus_responses",
    "triton_available",
]

IMPLS = ("auto", "kernel", "unfold", "plus", "triton", "triton_plus")
#: The fused Triton paths (CUDA, or CPU under ``TRITON_INTERPRET=1``; may fail to compile).
TRITON_IMPLS = ("triton", "triton_plus")
_KERNEL_METHODS = ("kernel", "unfold")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"mixed_conv2d: {name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise TypeError(f"mixed_conv2d: {name} must be an int or a pair of ints, got {value!r}")


def compute_dtype(x: Tensor) -> torch.dtype:
    """The convolution's dtype: autocast's where autocast is on, else ``x``'s."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _functorch_active() -> bool:
    return bool(torch._C._are_functorch_transforms_active())


def _is_tracing() -> bool:
    """True inside ``torch.compile``/``torch.export`` graph capture or ONNX export."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and compiler.is_compiling():
        return True
    onnx = getattr(torch, "onnx", None)
    return bool(onnx is not None and onnx.is_in_onnx_export())


# --------------------------------------------------------------------------- coefficients
class MixedCoeff(NamedTuple):
    """``coeff`` in canonical form ``(B, K, Oa, Ta)``: ``Oa ∈ {1, O}``, ``Ta ∈ {1, kh·kw}``."""

    a: Tensor
    per_channel: bool  # Oa == O
    per_tap: bool  # Ta == kh·kw


def canonical_coeff(coeff: Tensor, batch: int, num_kernels: int, out_channels: int,
                    kernel_size: Sequence[int]) -> MixedCoeff:
    """Validate ``coeff`` and view it as ``(B, K, Oa, Ta)`` (see :class:`MixedCoeff`).

    Accepted: ``(B, K)``, ``(B, K, O)``, ``(B, K, kh, kw)`` and ``(B, K, O, kh, kw)``, where
    ``B`` may be 1 (shared by the batch) and ``O``, ``kh``, ``kw`` may be 1 (broadcast).
    """
    kh, kw = kernel_size
    if not isinstance(coeff, Tensor):
        raise TypeError(f"mixed_conv2d: coeff must be a Tensor, got {type(coeff).__name__}")
    shape = tuple(coeff.shape)
    full = {2: (batch, num_kernels), 3: (batch, num_kernels, out_channels),
            4: (batch, num_kernels, kh, kw), 5: (batch, num_kernels, out_channels, kh, kw)}
    want = full.get(coeff.dim())
    ok = want is not None and shape[1] == num_kernels and all(
        s in (1, f) for s, f in zip(shape, want, strict=True))
    if not ok:
        raise ValueError(
            f"mixed_conv2d: coeff must have shape (B, K), (B, K, O), (B, K, kh, kw) or "
            f"(B, K, O, kh, kw) (B, O, kh, kw may be 1) with B={batch}, K={num_kernels}, "
            f"O={out_channels}, kh×kw={kh}×{kw}; got {shape}")
    if coeff.dim() == 2:
        a = coeff[:, :, None, None]
    elif coeff.dim() == 3:
        a = coeff[:, :, :, None]
    else:
        if coeff.dim() == 4:
            coeff = coeff[:, :, None]
        taps = coeff.shape[3] * coeff.shape[4]
        if taps not in (1, kh * kw):  # e.g. (.., kh, 1): broadcast to every tap
            coeff = coeff.expand(*coeff.shape[:3], kh, kw)
        a = coeff.reshape(*coeff.shape[:3], -1)
    if a.shape[0] != batch:
        a = a.expand(batch, *a.shape[1:])
    return MixedCoeff(a, a.shape[2] > 1 or out_channels == 1, a.shape[3] > 1 and kh * kw > 1)


def mix_kernels(a: Tensor, weight: Tensor, out: Tensor | None = None,
                block_bytes: int = 1 << 21) -> Tensor:
    """``Σ_k a[:, k] ⊙ W_k`` without autograd: ``(B, K, Oa, Ta)``, ``(K, O, Cg, T)`` →
    ``(B, O, Cg, T)`` (written into ``out`` when given).

    The ``K`` multiply-adds run over blocks of output channels of about ``block_bytes``
    (all samples), so each block stays in cache across the ``K`` passes and every weight
    row is read once: on 2 CPU threads 1.5× faster than whole-tensor passes for the
    75M-value kernels of a CIFAR ResNet-18's last stage at batch 32.
    """
    b, k = a.shape[:2]
    o, cg, t = weight.shape[1:]
    if out is None:
        out = torch.empty(b, o, cg, t, dtype=torch.promote_types(a.dtype, weight.dtype),
                          device=weight.device)
    per_channel = a.shape[2] > 1
    step = max(1, block_bytes // max(1, b * cg * t * out.element_size()))
    av = a.unsqueeze(3)  # (B, K, Oa, 1, Ta)
    for start in range(0, o, step):
        stop = start + step
        block = out[:, start:stop]
        ab = av[:, :, start:stop] if per_channel else av
        torch.mul(ab[:, 0], weight[0, start:stop], out=block)
        for j in range(1, k):
            block.addcmul_(ab[:, j], weight[j, start:stop])
    return out


def _mix_differentiable(a: Tensor, weight: Tensor) -> Tensor:
    av = a.unsqueeze(3)
    out = av[:, 0] * weight[0]
    for j in range(1, weight.shape[0]):
        out = out + av[:, j] * weight[j]
    return out


def _scale_kernels(mixed: Tensor, in_scale: Tensor | None, out_scale: Tensor | None,
                   groups: int) -> Tensor:
    """``mixed (B, O, Cg, T) ⊙ s_out[b, o] ⊙ s_in[b, c]`` (``c`` of ``o``'s group)."""
    b, o, cg = mixed.shape[:3]
    if in_scale is None:
        return mixed if out_scale is None else mixed * out_scale.view(b, o, 1, 1)
    s_in = in_scale.view(b, groups, 1, cg)
    if out_scale is None:
        scale = s_in.expand(b, groups, o // groups, cg)
    else:  # both: their product first (B·O·Cg values, 1/T of the kernels), then one pass
        scale = out_scale.view(b, groups, o // groups, 1) * s_in
    return mixed * scale.reshape(b, o, cg, 1)


# --------------------------------------------------------------------------- convolutions
def _out_size(size, kernel_size, stride, padding, dilation) -> tuple[int, int]:
    return tuple((s + 2 * p - d * (k - 1) - 1) // st + 1
                 for s, k, st, p, d in zip(size, kernel_size, stride, padding, dilation,
                                           strict=True))


def per_sample_conv(x: Tensor, kernels: Tensor, bias: Tensor | None, kernel_size: Sequence[int],
                    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                    groups: int, method: str = "kernel") -> Tensor:
    """Convolve sample ``b`` of ``x (B, C, H, W)`` with ``kernels[b] (O, Cg, kh·kw)``.

    ``bias``: ``(B, O)`` or ``None``. ``method``: ``"kernel"`` (one grouped convolution
    with ``B·groups`` groups) or ``"unfold"`` (im2col + batched GEMM).
    """
    b, c, h, w = x.shape
    o = kernels.shape[1]
    if method == "kernel":
        y = F.conv2d(x.reshape(1, b * c, h, w), kernels.reshape(b * o, c // groups, *kernel_size),
                     None if bias is None else bias.reshape(-1),
                     stride, padding, dilation, b * groups)
        return y.view(b, o, *y.shape[2:])
    m = kernels.shape[2] * kernels.shape[3]
    cols = F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
    length = cols.shape[-1]
    y = torch.matmul(kernels.reshape(b, groups, o // groups, m),
                     cols.view(b, groups, m, length)).view(b, o, length)
    if bias is not None:
        y = y + bias.unsqueeze(-1)
    return y.view(b, o, *_out_size((h, w), kernel_size, stride, padding, dilation))


#: On CPU the mixed kernels of one call (one batch chunk) go into one reusable buffer per
#: thread, up to this many bytes: the layers run one after the other, and a fresh
#: allocation of that size is mapped and faulted in by glibc on every call (at batch 1
#: that costs about as much as the mix itself). The buffer is kept for the thread's life.
CPU_WORKSPACE_BYTES = 32 << 20
_WORKSPACE = threading.local()


def kernel_workspace(shape: Sequence[int], dtype: torch.dtype, device: torch.device
                     ) -> Tensor:
    """An uninitialised ``shape`` tensor for the mixed kernels of one call.

    On CPU, up to :data:`CPU_WORKSPACE_BYTES`, a view of this thread's reusable buffer:
    valid until the next call that asks for a workspace (never keep it past the call).
    """
    shape = tuple(int(v) for v in shape)
    numel = math.prod(shape)
    if (device.type != "cpu" or numel * dtype.itemsize > CPU_WORKSPACE_BYTES
            or _is_tracing() or _functorch_active()):
        return torch.empty(shape, dtype=dtype, device=device)
    buf = getattr(_WORKSPACE, "buf", None)
    if buf is None or buf.dtype != dtype or buf.numel() < numel:
        # a normal tensor even when first asked for under inference_mode: an inference
        # tensor could not be written by a later training step
        with torch.inference_mode(False):
            buf = torch.empty(numel, dtype=dtype)
        _WORKSPACE.buf = buf
    return buf[:numel].view(shape)


def _mix_in_workspace(a: Tensor, w_flat: Tensor) -> Tensor:
    """:func:`mix_kernels` of ``a`` (in the weight's dtype) into :func:`kernel_workspace`."""
    return mix_kernels(a, w_flat, out=kernel_workspace((a.shape[0], *w_flat.shape[1:]),
                                                       w_flat.dtype, w_flat.device))


#: On CPU the kernel and unfold paths run the batch in chunks whose per-sample kernels
#: take at most about this many bytes (at least one sample per chunk). With glibc's
#: default allocator every temporary above its mmap threshold (at most 32 MiB) is
#: mapped, page-faulted in and unmapped again on every call; kernels of a few MiB are
#: reused from the heap and stay in cache between the mix and the convolution
#: (docs/performance.md). CUDA's caching allocator has no such cost: no chunks there.
CPU_KERNEL_CHUNK_BYTES = 16 << 20


def chunk_samples(batch: int, per_sample_bytes: int) -> int:
    """Samples per batch chunk of the kernel/unfold paths on CPU (see
    :data:`CPU_KERNEL_CHUNK_BYTES`; equal chunks, at least one sample)."""
    n = max(1, CPU_KERNEL_CHUNK_BYTES // max(1, per_sample_bytes))
    if n >= batch:
        return batch
    return -(-batch // -(-batch // n))  # equal chunks: ceil(b / number of chunks)


def _batch_chunks(x: Tensor, weight: Tensor) -> list[slice]:
    """The batch slices the kernel/unfold paths run one after the other."""
    b = x.shape[0]
    if x.device.type != "cpu" or b <= 1:
        return [slice(0, b)]
    n = chunk_samples(b, weight[0].numel() * max(weight.element_size(), x.element_size()))
    return [slice(i, min(i + n, b)) for i in range(0, b, n)]


#: The fewest output channels an output-channel block of the unfold path may hold (below
#: that its per-sample GEMMs are too narrow to pay; batch chunks are used instead).
CPU_MIN_BLOCK_CHANNELS = 16


def _out_blocks(x: Tensor, weight: Tensor, groups: int, method: str,
                length: int) -> list[slice] | None:
    """Output-channel blocks for the unfold path on CPU, or ``None`` (batch chunks).

    Batch chunks read the ``K`` base kernels again for every chunk (the mix, its
    recomputation, both contractions: about 7 passes over ``K·O·m`` values), output-channel
    blocks read the input's im2col columns again for every block (the forward GEMM and the
    two backward GEMMs: 3 passes over ``B·m·L``). With the same number of pieces, blocks
    win where ``3·B·L < 7·K·O``: small maps and wide layers, e.g. a CIFAR ResNet-18's last
    stage (512 channels, 4², batch 32, op-level training step on 2 threads: 23.1× static
    in batch chunks of one sample, 3.98× in blocks, 5.32× in the plus form;
    docs/performance.md). ``groups=1`` only.
    """
    b = x.shape[0]
    if method != "unfold" or x.device.type != "cpu" or groups != 1:
        return None
    k, o = weight.shape[:2]
    n = block_channels(b, k, o, weight[0, 0].numel(), length,
                       max(weight.element_size(), x.element_size()))
    return None if n is None else [slice(i, min(i + n, o)) for i in range(0, o, n)]


def block_channels(batch: int, num_kernels: int, out_channels: int, m: int, length: int,
                   elem_bytes: int) -> int | None:
    """Output channels per block of the unfold path on CPU with ``groups=1`` (``m = C·kh·kw``
    values per kernel, ``length`` output positions), or ``None`` for batch chunks (see
    :func:`_out_blocks`; equal blocks)."""
    per_row = batch * m * elem_bytes  # one output channel's per-sample kernels
    if (batch <= 1 or per_row * out_channels <= CPU_KERNEL_CHUNK_BYTES
            or 3 * batch * length >= 7 * num_kernels * out_channels):
        return None
    n = CPU_KERNEL_CHUNK_BYTES // per_row
    if n < CPU_MIN_BLOCK_CHANNELS:
        return None
    return -(-out_channels // -(-out_channels // n))


def _composite(x, weight, a, in_scale, out_scale, bias_b, conf):
    """The kernel/unfold paths in plain differentiable ops (graph capture, torch.func,
    higher-order gradients)."""
    stride, padding, dilation, groups, method, cdt = conf
    method = "kernel" if method in TRITON_IMPLS else method
    k, o, cg = weight.shape[:3]
    ksize = tuple(weight.shape[3:])
    wdt = weight.dtype
    w = weight.reshape(k, o, cg, -1)
    mixed = _mix_differentiable(a.to(wdt), w)
    kernels = _scale_kernels(mixed, None if in_scale is None else in_scale.to(wdt),
                             None if out_scale is None else out_scale.to(wdt), groups)
    with torch.autocast(x.device.type, enabled=False):
        y = per_sample_conv(x.to(cdt), kernels.to(cdt),
                            None if bias_b is None else bias_b.to(cdt), ksize, stride, padding,
                            dilation, groups, method)
    return y


class _MixedConv(torch.autograd.Function):
    """Kernel, unfold and Triton paths; saves ``x``, ``weight``, ``a`` and the scales only."""

    @staticmethod
    def forward(x, weight, a, in_scale, out_scale, bias_b, conf):
        stride, padding, dilation, groups, method, cdt = conf
        if method == "triton":
            from ._triton_mixed import triton_forward

            return triton_forward(x.to(cdt), weight, a, in_scale, out_scale,
                                  None if bias_b is None else bias_b.to(cdt), conf)
        if method == "triton_plus":
            from ._triton_mixed import triton_plus_forward

            return triton_plus_forward(x.to(cdt), weight, a, in_scale, out_scale,
                                       None if bias_b is None else bias_b.to(cdt), conf)
        k, o, cg = weight.shape[:3]
        wdt = weight.dtype
        w_flat = weight.reshape(k, o, cg, -1)
        ksize = tuple(weight.shape[3:])
        ho, wo = _out_size(x.shape[2:], ksize, stride, padding, dilation)
        blocks = _out_blocks(x, weight, groups, method, ho * wo)
        if blocks is not None:
            return _unfold_blocked_forward(x, w_flat, a, in_scale, out_scale, bias_b, conf,
                                           blocks, ksize, (ho, wo))
        out = None
        for sl in _batch_chunks(x, weight):
            kernels = _mix_in_workspace(a[sl].to(wdt), w_flat)
            kernels = _scale_kernels(kernels, None if in_scale is None else in_scale[sl].to(wdt),
                                     None if out_scale is None else out_scale[sl].to(wdt),
                                     groups)
            with torch.autocast(x.device.type, enabled=False):
                y = per_sample_conv(x[sl].to(cdt), kernels.to(cdt),
                                    None if bias_b is None else bias_b[sl].to(cdt),
                                    tuple(weight.shape[3:]), stride, padding, dilation, groups,
                                    method)
            if sl.stop - sl.start == x.shape[0]:
                return y
            if out is None:
                out = y.new_empty((x.shape[0], *y.shape[1:]))
            out[sl] = y
        return out

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, a, in_scale, out_scale, bias_b, conf = inputs
        ctx.save_for_backward(x, weight, a, in_scale, out_scale, bias_b)
        ctx.conf = conf

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, a, in_scale, out_scale, bias_b = ctx.saved_tensors
        needs = ctx.needs_input_grad[:6]
        if torch.is_grad_enabled():
            # create_graph=True: derive the gradients through the composite path so that
            # they are themselves differentiable (double backward).
            return _composite_backward(ctx.conf, needs, grad_y, x, weight, a, in_scale,
                                       out_scale, bias_b)
        grads = _kernel_backward(ctx.conf, needs, grad_y, x, weight, a, in_scale, out_scale,
                                 bias_b)
        return (*grads, None)


def _composite_backward(conf, needs, grad_y, *inputs):
    wanted = [t for t, need in zip(inputs, needs, strict=True) if need]
    with torch.enable_grad():
        y = _composite(*inputs, conf)
    grads = iter(torch.autograd.grad(y, wanted, grad_y, create_graph=True, allow_unused=True))
    out = [next(grads) if need else None for need in needs]
    out = [torch.zeros_like(t) if (g is None and need) else g
           for t, g, need in zip(inputs, out, needs, strict=True)]
    return (*out, None)


def _kernel_backward(conf, needs, grad_y, x, weight, a, in_scale, out_scale, bias_b):
    stride, padding, dilation, groups, method = conf[:5]
    if method == "triton_plus":
        return _triton_plus_backward(conf, needs, grad_y, x, weight, a, in_scale, out_scale,
                                     bias_b)
    if method == "unfold":
        ho, wo = _out_size(x.shape[2:], tuple(weight.shape[3:]), stride, padding, dilation)
        blocks = _out_blocks(x, weight, groups, method, ho * wo)
        if blocks is not None:
            return _unfold_blocked_backward(conf, needs, grad_y, x, weight, a, in_scale,
                                            out_scale, bias_b, blocks)
    # the Triton kernels take the whole batch; the torch paths run in chunks on CPU
    chunks = [slice(0, x.shape[0])] if method == "triton" else _batch_chunks(x, weight)
    if len(chunks) == 1:
        return _kernel_backward_chunk(conf, needs, grad_y, x, weight, a, in_scale, out_scale,
                                      bias_b)
    # Chunk by chunk (see _batch_chunks): the per-sample gradients are written into their
    # slices, the base kernels' gradient is summed over the chunks. For a large bank what
    # every chunk would otherwise redo on the K base kernels is done once here (with 512
    # channels a chunk is one sample, and a per-chunk copy and sum of the bank dominated).
    b = x.shape[0]
    shared = _SharedBankGrads.for_chunks(weight, a, needs)
    per_sample = (x, a, in_scale, out_scale, bias_b)
    outs: list = [None] * 6
    for sl in chunks:
        parts = [None if t is None else t[sl] for t in per_sample]
        got = _kernel_backward_chunk(conf, needs, grad_y[sl], parts[0], weight, parts[1],
                                     parts[2], parts[3], parts[4], shared=shared)
        for i, g in enumerate(got):
            if g is None:
                continue
            if i == 1:  # the base kernels: a sum over the samples
                outs[1] = g if outs[1] is None else outs[1].add_(g)
                continue
            if outs[i] is None:
                outs[i] = g.new_empty((b, *g.shape[1:]))
            outs[i][sl] = g
    if shared is not None and shared.grad_w is not None:  # summed in place by the chunks
        outs[1] = shared.grad_w.transpose(0, 1).reshape(weight.shape)
    return tuple(outs)


def _kernel_backward_chunk(conf, needs, grad_y, x, weight, a, in_scale, out_scale, bias_b,
                           shared: _SharedBankGrads | None = None):
    stride, padding, dilation, groups, method, cdt = conf
    b, c, h, w = x.shape
    k, o, cg = weight.shape[:3]
    ksize = tuple(weight.shape[3:])
    wdt = weight.dtype
    w_flat = weight.reshape(k, o, cg, -1)
    t = w_flat.shape[3]
    a_w = a.to(wdt)
    s_in = None if in_scale is None else in_scale.to(wdt)
    s_out = None if out_scale is None else out_scale.to(wdt)
    mixed = _mix_in_workspace(a_w, w_flat)  # recomputed, never saved
    need_x = needs[0]
    with torch.autocast(x.device.type, enabled=False):
        if method == "triton":
            from ._triton_mixed import triton_backward

            grad_x, grad_kernels = triton_backward(grad_y, x.to(cdt), weight, a, in_scale,
                                                   out_scale, conf, need_x)
        elif method == "kernel":
            kernels = _scale_kernels(mixed, s_in, s_out, groups)
            grad_x, grad_kernels, _ = torch.ops.aten.convolution_backward(
                grad_y.reshape(1, b * o, *grad_y.shape[2:]).to(cdt),
                x.reshape(1, b * c, h, w).to(cdt),
                kernels.view(b * o, cg, *ksize).to(cdt),
                None, list(stride), list(padding), list(dilation), False, [0, 0], b * groups,
                [need_x, True, False],
            )
            grad_x = None if grad_x is None else grad_x.view(b, c, h, w)
        else:
            kernels = _scale_kernels(mixed, s_in, s_out, groups)
            m = cg * t
            cols = F.unfold(x.to(cdt), ksize, dilation=dilation, padding=padding, stride=stride)
            length = cols.shape[-1]
            gy = grad_y.reshape(b, groups, o // groups, length).to(cdt)
            grad_kernels = torch.matmul(gy, cols.view(b, groups, m, length).transpose(2, 3))
            grad_x = None
            if need_x:
                grad_cols = torch.matmul(kernels.to(cdt).view(b, groups, o // groups, m)
                                         .transpose(2, 3), gy)
                grad_x = F.fold(grad_cols.reshape(b, groups * m, length), (h, w), ksize,
                                dilation=dilation, padding=padding, stride=stride)
    gk = grad_kernels.reshape(b, o, cg, t).to(wdt)
    grad_w, grad_a, grad_in, grad_out = _kernel_space_grads(
        gk, mixed, w_flat, a, s_in, s_out, groups, needs, shared=shared)
    if shared is not None and shared.grad_w is not None:
        grad_w = None  # added into shared.grad_w; the caller reads it after the last chunk
    grad_bias = None
    if bias_b is not None and needs[5]:
        grad_bias = grad_y.sum((2, 3)).to(bias_b.dtype)
    return (None if grad_x is None else grad_x.to(x.dtype),
            None if grad_w is None else grad_w.reshape(weight.shape),
            None if grad_a is None else grad_a.to(a.dtype),
            None if grad_in is None else grad_in.to(in_scale.dtype),
            None if grad_out is None else grad_out.to(out_scale.dtype),
            grad_bias)


def _triton_plus_backward(conf, needs, grad_y, x, weight, a, in_scale, out_scale, bias_b):
    """Backward of ``impl="triton_plus"``: the kernels give ``∂(s_in ⊙ x)``, ``∂W`` and the
    response sums ``G[b, k, o] = Σ_p ∂y · conv(s_in ⊙ x, W_k)`` (see
    :func:`a2d2c.ops._triton_mixed.triton_plus_backward`); the rest are small contractions:
    ``∂a = s_out ⊙ G`` (summed over ``O`` for ``(B, K)`` coefficients), ``∂s_out = Σ_k a ⊙
    G``, ``∂s_in = Σ_q x ⊙ ∂(s_in ⊙ x)``."""
    from ._triton_mixed import triton_plus_backward

    cdt = conf[5]
    want_xs = needs[0] or (in_scale is not None and needs[3])
    want_resp = needs[2] or (out_scale is not None and needs[4])
    with torch.autocast(x.device.type, enabled=False):
        grad_xs, grad_w, resp = triton_plus_backward(grad_y, x.to(cdt), weight, a, in_scale,
                                                     out_scale, conf,
                                                     (want_xs, needs[1], want_resp))
    grad_x = grad_in = grad_a = grad_out = grad_bias = None
    if needs[0]:
        grad_x = grad_xs if in_scale is None else grad_xs * in_scale.to(grad_xs.dtype)[
            :, :, None, None]
        grad_x = grad_x.to(x.dtype)
    if in_scale is not None and needs[3]:
        grad_in = (grad_xs.float() * x.float()).sum((2, 3)).to(in_scale.dtype)
    if needs[2]:
        ga = resp if out_scale is None else resp * out_scale.float()[:, None, :]
        if a.shape[2] == 1:
            ga = ga.sum(2, keepdim=True)
        grad_a = ga.unsqueeze(-1).to(a.dtype)
    if out_scale is not None and needs[4]:
        grad_out = (resp * a[..., 0].float()).sum(1).to(out_scale.dtype)
    if bias_b is not None and needs[5]:
        grad_bias = grad_y.sum((2, 3)).to(bias_b.dtype)
    return (grad_x, None if grad_w is None else grad_w.reshape(weight.shape).to(weight.dtype),
            grad_a, grad_in, grad_out, grad_bias)


def _block_args(a: Tensor, w_flat: Tensor, out_scale: Tensor | None, blk: slice):
    """The coefficients, base kernels and output scale of one block of output channels."""
    return (a[:, :, blk] if a.shape[2] > 1 else a, w_flat[:, blk],
            None if out_scale is None else out_scale[:, blk])


def _unfold_blocked_forward(x, w_flat, a, in_scale, out_scale, bias_b, conf, blocks, ksize,
                            out_hw):
    """The unfold path by blocks of output channels (see :func:`_out_blocks`): im2col once,
    then per block the block's mixed kernels (in the workspace) and one batched GEMM."""
    stride, padding, dilation, groups, _method, cdt = conf
    b = x.shape[0]
    wdt = w_flat.dtype
    with torch.autocast(x.device.type, enabled=False):
        cols = F.unfold(x.to(cdt), ksize, dilation=dilation, padding=padding, stride=stride)
        y = cols.new_empty(b, w_flat.shape[1], cols.shape[-1])
        s_in = None if in_scale is None else in_scale.to(wdt)
        for blk in blocks:
            a_b, w_b, s_out_b = _block_args(a, w_flat, out_scale, blk)
            kernels = _scale_kernels(_mix_in_workspace(a_b.to(wdt), w_b), s_in,
                                     None if s_out_b is None else s_out_b.to(wdt), groups)
            y[:, blk] = torch.bmm(kernels.to(cdt).view(b, kernels.shape[1], -1), cols)
        if bias_b is not None:
            y += bias_b.to(cdt).unsqueeze(-1)
    return y.view(b, -1, *out_hw)


def _unfold_blocked_backward(conf, needs, grad_y, x, weight, a, in_scale, out_scale, bias_b,
                             blocks):
    """Backward of :func:`_unfold_blocked_forward`, block by block: the input's columns
    gradient is summed over the blocks (one col2im at the end), every other gradient is
    written into its block (or summed over the blocks where it is shared by them)."""
    stride, padding, dilation, groups, _method, cdt = conf
    b, c, h, w = x.shape
    k, o, cg = weight.shape[:3]
    ksize = tuple(weight.shape[3:])
    wdt = weight.dtype
    w_flat = weight.reshape(k, o, cg, -1)
    s_in = None if in_scale is None else in_scale.to(wdt)
    s_out = None if out_scale is None else out_scale.to(wdt)
    with torch.autocast(x.device.type, enabled=False):
        cols = F.unfold(x.to(cdt), ksize, dilation=dilation, padding=padding, stride=stride)
        gy = grad_y.reshape(b, o, cols.shape[-1]).to(cdt)
        grad_cols = torch.zeros_like(cols) if needs[0] else None
        grad_w = torch.empty_like(w_flat) if needs[1] else None
        shared_a = a.shape[2] == 1  # one coefficient for every output channel: sum blocks
        grad_a = None
        if needs[2]:
            grad_a = (torch.zeros if shared_a else torch.empty)(a.shape, dtype=a.dtype)
        grad_in = torch.zeros(b, c, dtype=in_scale.dtype) if (
            in_scale is not None and needs[3]) else None
        grad_out = torch.empty(b, o, dtype=out_scale.dtype) if (
            out_scale is not None and needs[4]) else None
        for blk in blocks:
            a_b, w_b, s_out_b = _block_args(a, w_flat, s_out, blk)
            mixed = _mix_in_workspace(a_b.to(wdt), w_b)  # recomputed, never saved
            n = mixed.shape[1]
            gy_b = gy[:, blk]
            grad_kernels = torch.bmm(gy_b, cols.transpose(1, 2))  # (B, n, m)
            if grad_cols is not None:
                kernels = _scale_kernels(mixed, s_in, s_out_b, groups)
                grad_cols.baddbmm_(kernels.to(cdt).view(b, n, -1).transpose(1, 2), gy_b)
            gw, ga, gin, gout = _kernel_space_grads(
                grad_kernels.view(b, n, cg, -1).to(wdt), mixed, w_b, a_b, s_in, s_out_b,
                groups, needs)
            if gw is not None:
                grad_w[:, blk] = gw.reshape(k, n, cg, -1)
            if ga is not None:
                if shared_a:
                    grad_a += ga.to(a.dtype)
                else:
                    grad_a[:, :, blk] = ga
            if gin is not None:
                grad_in += gin.to(in_scale.dtype)
            if gout is not None:
                grad_out[:, blk] = gout
        grad_x = None
        if grad_cols is not None:
            grad_x = F.fold(grad_cols, (h, w), ksize, dilation=dilation, padding=padding,
                            stride=stride).to(x.dtype)
    grad_bias = None
    if bias_b is not None and needs[5]:
        grad_bias = grad_y.sum((2, 3)).to(bias_b.dtype)
    return (grad_x, None if grad_w is None else grad_w.reshape(weight.shape), grad_a, grad_in,
            grad_out, grad_bias)


#: Banks above this many bytes get :class:`_SharedBankGrads` in a chunked backward. glibc's
#: dynamic mmap threshold stops at 32 MiB, so every temporary the size of a larger bank is
#: mapped and faulted in again by every chunk (CIFAR ResNet-18's last stage, K=4: 37.7 MB;
#: its kernel-form layer step at b32 went from 1.0 s to 0.30 s, 2 threads). Below it the
#: per-chunk temporaries are reused from the heap, and two more bank-sized buffers kept
#: across the chunks measured slower under glibc's defaults (256 ch 8² b32: 88-104 ms →
#: 111-123 ms, page faults 14-22K → 31-40K per step; equal with the allocator tuned).
CPU_SHARED_BANK_BYTES = 32 << 20


def _bank_by_channel(weight: Tensor) -> Tensor:
    """The base kernels ``(K, O, ...)`` as a contiguous ``(O, K, m)`` copy."""
    k, o = weight.shape[:2]
    return weight.reshape(k, o, -1).transpose(0, 1).contiguous()


class _SharedBankGrads(NamedTuple):
    """What the batch chunks of one backward share for tap-independent coefficients: the
    bank as ``(O, K, m)`` for the coefficient gradient, and the ``(O, K, m)`` sum the
    chunks add their base-kernel gradient into (``baddbmm_``, no per-chunk temporary)."""

    w_o: Tensor | None
    grad_w: Tensor | None

    @staticmethod
    def for_chunks(weight: Tensor, a: Tensor, needs) -> _SharedBankGrads | None:
        if (a.shape[3] != 1 or not (needs[1] or needs[2])
                or weight.numel() * weight.element_size() <= CPU_SHARED_BANK_BYTES):
            return None
        k, o = weight.shape[:2]
        w_o = _bank_by_channel(weight) if needs[2] else None
        grad_w = (torch.zeros(o, k, weight[0, 0].numel(), dtype=weight.dtype,
                              device=weight.device) if needs[1] else None)
        return _SharedBankGrads(w_o, grad_w)


def _kernel_space_grads(gk: Tensor, mixed: Tensor, w_flat: Tensor, a: Tensor,
                        s_in: Tensor | None, s_out: Tensor | None, groups: int, needs,
                        shared: _SharedBankGrads | None = None):
    """From ``∂W̃ (B, O, Cg, T)`` to the gradients of ``W``, ``a``, ``s_in`` and ``s_out``.

    ``mixed = Σ_k a_k ⊙ W_k`` (unscaled), everything in the weight's dtype. ``shared``
    (tap-independent coefficients, one batch chunk of several): the bank's ``(O, K, m)``
    copy to use, and the sum the base-kernel gradient is added into (returned as it).
    """
    b, o, cg = gk.shape[:3]
    k = w_flat.shape[0]
    c = cg * groups
    a_w = a.to(w_flat.dtype)
    grad_in = grad_out = None
    want_out = s_out is not None and needs[4]
    want_in = s_in is not None and needs[3]
    if want_out or want_in:
        # Both scale gradients from one pass over the kernels: P[b, o, c] = Σ_t ∂W̃ ⊙ W̃,
        # then ∂s_out = Σ_c P·s_in and ∂s_in = Σ_{o of c's group} P·s_out (each 1/T of it).
        prod = (gk * mixed).sum(3).view(b, groups, o // groups, cg)
        if want_out:
            grad_out = (prod if s_in is None else prod * s_in.view(b, groups, 1, cg)
                        ).sum(3).reshape(b, o)
        if want_in:
            grad_in = (prod if s_out is None else prod * s_out.view(b, groups, o // groups, 1)
                       ).sum(2).reshape(b, c)
    g_mixed = _scale_kernels(gk, s_in, s_out, groups)  # (B, O, Cg, T)
    grad_a = grad_w = None
    if a.shape[3] == 1 and (needs[1] or needs[2]):
        # Tap-independent: both contractions are batched GEMMs over O on a strided
        # (O, B, m) view of the kernel gradient, shaped so that K (often 4) is never
        # GEMM's narrow output dimension (15x faster on CPU than the other orientation).
        g_t = g_mixed.reshape(b, o, -1).transpose(0, 1)  # (O, B, m)
        if needs[2]:
            w_o = shared.w_o if shared is not None else _bank_by_channel(w_flat)  # (O, K, m)
            grad_a = torch.bmm(w_o, g_t.transpose(1, 2)).permute(2, 1, 0)  # (B, K, O)
            if a.shape[2] == 1:
                grad_a = grad_a.sum(2, keepdim=True)
            grad_a = grad_a.unsqueeze(-1)
        if needs[1]:
            a_full = a_w[..., 0].expand(b, k, o).permute(2, 1, 0).contiguous()  # (O, K, B)
            if shared is not None:
                grad_w = shared.grad_w.baddbmm_(a_full, g_t)  # (O, K, m)
            else:
                grad_w = torch.bmm(a_full, g_t)
            grad_w = grad_w.transpose(0, 1)
    elif needs[1] or needs[2]:
        spec = "bk" + ("o" if a.shape[2] > 1 else "") + "t"
        a_s = a_w if a.shape[2] > 1 else a_w[:, :, 0]
        if needs[2]:
            grad_a = torch.einsum(f"koct,boct->{spec}", w_flat, g_mixed).reshape(a.shape)
        if needs[1]:
            grad_w = torch.einsum(f"{spec},boct->koct", a_s, g_mixed)
    return grad_w, grad_a, grad_in, grad_out


# --------------------------------------------------------------------------- plus form
#: How the plus form computes its ``K`` responses: one dense convolution with ``K·O``
#: outputs (``"conv"``, oneDNN/cuDNN), or im2col and one GEMM per group over the whole
#: batch's columns (``"gemm"``). Measured on CPU, 2 threads, training step of the K=4
#: responses: on an Intel Xeon (AVX-512/AMX, 2026-12-06) the GEMM took 0.60x the
#: convolution's time on wide layers over small maps (256→512 channels, stride 2, 8² →
#: 4²; 512 channels, 4², batch 32) and 1.1-3x it everywhere else; on an AMD EPYC
#: (2026-12-04) 1.5x at 512 channels, 4². So the default is the convolution and the GEMM
#: is taken where :mod:`a2d2c.ops.tuning` measured it faster (:func:`plus_method`).
PLUS_METHODS = ("conv", "gemm")


def _gemm_responses(x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int],
                    dilation: Sequence[int], groups: int, tap: Tensor | None = None
                    ) -> Tensor:
    """The ``K`` base responses as ``(K, O, B, L)`` by im2col and one GEMM per group.

    The batch's columns side by side, ``(g, m, B·L)``, so each group is one GEMM with a
    wide right-hand side (per-sample GEMMs over a 4² map have 16 columns, and their weight
    gradient would expand the bank to B copies). ``tap (B, kh·kw)``: scales the columns
    of every tap first (the ODConv plus form).
    """
    b, c = x.shape[:2]
    k, o, cg = weight.shape[:3]
    ksize = tuple(weight.shape[3:])
    taps = ksize[0] * ksize[1]
    og = o // groups
    cols = F.unfold(x, ksize, dilation=dilation, padding=padding, stride=stride)
    length = cols.shape[-1]
    if tap is not None:
        cols = cols.view(b, c, taps, length) * tap.to(cols.dtype).view(b, 1, taps, 1)
    cols = cols.reshape(b, groups, cg * taps, length).permute(1, 2, 0, 3).reshape(
        groups, cg * taps, b * length)
    wg = (weight.reshape(k, groups, og, cg * taps).transpose(0, 1)
          .reshape(groups, k * og, cg * taps))  # (g, K·O/g, m)
    resp = torch.bmm(wg, cols).view(groups, k, og, b, length)
    return resp.transpose(0, 1).reshape(k, o, b, length)  # a view if g = 1


def plus_responses(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Sequence[int],
                   padding: Sequence[int], dilation: Sequence[int], groups: int,
                   method: str = "conv") -> Tensor:
    """The ``K`` base responses ``F_k = conv(x, W_k) + b_k`` as ``(B, K, O, H', W')``.

    ``method`` (:data:`PLUS_METHODS`): one dense convolution with ``K·O`` output channels
    (grouped like the layer), or im2col + GEMM. ``bias`` is ``(K, O)`` or ``None``.
    """
    k, o = weight.shape[:2]
    og = o // groups
    if method == "gemm":
        resp = _gemm_responses(x, weight, stride, padding, dilation, groups)  # (K, O, B, L)
        if bias is not None:
            resp = resp + bias.to(resp.dtype)[:, :, None, None]
        b = x.shape[0]
        ho, wo = _out_size(x.shape[2:], weight.shape[3:], stride, padding, dilation)
        return resp.permute(2, 0, 1, 3).reshape(b, k, o, ho, wo)
    if method != "conv":
        raise ValueError(f"plus_responses: method must be one of {PLUS_METHODS}, got {method!r}")
    # Output channels of a grouped conv are group-major: order them (g, K, O/g).
    w = weight.view(k, groups, og, *weight.shape[2:]).transpose(0, 1)
    bs = None if bias is None else bias.view(k, groups, og).transpose(0, 1).reshape(-1)
    feats = F.conv2d(x, w.reshape(groups * k * og, *weight.shape[2:]), bs, stride, padding,
                     dilation, groups)
    b, _, ho, wo = feats.shape
    if groups == 1:
        return feats.view(b, k, o, ho, wo)
    return feats.view(b, groups, k, og, ho, wo).transpose(1, 2).reshape(b, k, o, ho, wo)


def plus_method(x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], groups: int) -> str:
    """How the plus form computes its responses for this call (:data:`PLUS_METHODS`).

    ``"conv"``, unless measured choice is on (:func:`a2d2c.ops.tuning.set_benchmark`) on
    CPU: then both are timed once per signature (forward, and backward where a gradient
    is wanted) on the call's own tensors and the faster is kept. Not while tracing or
    under ``torch.func`` transforms.
    """
    if (x.device.type != "cpu" or not tuning.is_benchmark_enabled() or _is_tracing()
            or _functorch_active()):
        return "conv"
    stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
    key = tuning.signature(tuning.PLUS_RESPONSES, (x, weight), stride, padding, dilation,
                           groups)

    def run(method: str) -> None:
        tuning.replay(lambda t: plus_responses(t[0], t[1], None, stride, padding, dilation,
                                               groups, method), (x, weight))

    return tuning.tuned_choice(key, PLUS_METHODS, run, x.device)


def mix_responses(feats: Tensor, a: Tensor) -> Tensor:
    """``Σ_k a[:, k] ⊙ F_k``: ``feats (B, K, O, H', W')``, ``a (B, K, Oa)`` → ``(B, O, H', W')``.

    Computed in ``feats``' dtype (CUDA autocast would otherwise run the sum in float32).
    """
    b, k, o = feats.shape[:3]
    with torch.autocast(feats.device.type, enabled=False):
        a = a.to(feats.dtype)
        if a.shape[2] == 1:
            # one weight per kernel: a (1×K)·(K×O·L) GEMM per sample
            return torch.bmm(a.view(b, 1, k), feats.reshape(b, k, -1)).view(
                b, o, *feats.shape[3:])
        return (feats * a[..., None, None]).sum(1)


def _plus(x, weight, coeff: MixedCoeff, in_scale, out_scale, bias_b, stride, padding, dilation,
          groups, cdt, tap=None):
    """The plus form: the ``K`` responses (:func:`plus_method`: one dense convolution, or
    im2col + GEMM) mixed with ``a``.

    ``tap (B, kh, kw)``: a coefficient that factors as ``a[b,k,o] · s_tap[b,t]`` (ODConv:
    kernel × spatial attention), always by GEMM: the input's im2col columns are scaled by
    ``s_in[b,c] · s_tap[b,t]``. Exact: ``Σ_t Σ_c (Σ_k a_k s_tap[t] W_k[o,c,t]) x[c, p+t] =
    Σ_k a_k Σ_{c,t} W_k[o,c,t] · (s_tap[t] x[c, p+t])``. Cost as the plus form (``K``
    convolutions, as GEMMs) plus im2col; memory: the scaled columns and the ``K·O``
    responses."""
    with torch.autocast(x.device.type, enabled=False):
        xs = x.to(cdt)
        if in_scale is not None:
            xs = xs * in_scale.to(cdt)[:, :, None, None]
        wc = weight.to(cdt)
        if tap is not None or plus_method(xs, wc, stride, padding, dilation, groups) == "gemm":
            resp = _gemm_responses(xs, wc, stride, padding, dilation, groups,
                                   None if tap is None else tap.reshape(x.shape[0], -1))
            return _mix_gemm_responses(resp, coeff, out_scale, bias_b, x.shape, weight.shape,
                                       stride, padding, dilation, cdt)
        feats = plus_responses(xs, wc, None, stride, padding, dilation, groups)
        y = mix_responses(feats, coeff.a[..., 0])
        if out_scale is not None:
            y = y * out_scale.to(cdt)[:, :, None, None]
        if bias_b is not None:
            y = y + bias_b.to(cdt)[:, :, None, None]
    return y


def _mix_gemm_responses(resp: Tensor, coeff: MixedCoeff, out_scale, bias_b, x_shape,
                        w_shape, stride, padding, dilation, cdt) -> Tensor:
    """``Σ_k a[:, k] ⊙ F_k`` (then scale, bias) of responses ``(K, O, B, L)`` in that layout,
    returned as a contiguous ``(B, O, H', W')``."""
    b = x_shape[0]
    o = w_shape[1]
    a = coeff.a[..., 0].to(cdt).permute(1, 2, 0)  # (K, Oa, B)
    y = (resp * a[..., None]).sum(0)  # (O, B, L)
    if out_scale is not None:
        y = y * out_scale.to(cdt).t()[:, :, None]
    if bias_b is not None:
        y = y + bias_b.to(cdt).t()[:, :, None]
    return y.permute(1, 0, 2).contiguous().view(
        b, o, *_out_size(x_shape[2:], w_shape[3:], stride, padding, dilation))


# ------------------------------------------------------------------ under torch.compile
def _opaque_under_compile() -> bool:
    """Graph capture by ``torch.compile`` (not ``torch.export``/ONNX, which need plain ops
    to serialise, and not under ``torch.func`` transforms)."""
    compiler = torch.compiler
    if not compiler.is_compiling() or compiler.is_exporting():
        return False
    return not (torch.onnx.is_in_onnx_export() or _functorch_active())


def _opaque_conf(impl: str, x: Tensor, weight: Tensor, a: Tensor, stride, padding, dilation,
                 groups: int, cdt: torch.dtype, training: bool) -> tuple:
    """The eager ``conf`` the opaque ops run: ``impl`` as requested, ``"auto"`` resolved for
    the real shapes among the paths with their own backward (the plus form is traced)."""
    stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
    if impl == "auto":
        impl = auto_impl(x.shape, weight.shape, a.shape[3] > 1, training=training,
                         device_type=x.device.type, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, candidates=("kernel", "unfold"))
    return (stride, padding, dilation, groups, impl, cdt)


# Under torch.compile the kernel, unfold and Triton paths are one custom op with its own
# backward op: the traced alternative (_composite, plain differentiable ops) cannot run the
# grouped convolution whose group count is the batch size, the chunks, the workspace or the
# Triton kernels, and on CPU it made a compiled A2D2C network ~2x slower than eager
# (docs/mixed_conv.md). Inside the ops the eager code runs on real tensors.
@torch.library.custom_op(
    "a2d2c::mixed_conv2d", mutates_args=(),
    schema="(Tensor x, Tensor weight, Tensor a, Tensor? in_scale, Tensor? out_scale, "
           "Tensor? bias, int[] stride, int[] padding, int[] dilation, int groups, str impl, "
           "ScalarType cdt, bool training) -> Tensor")
def _opaque_forward(x, weight, a, in_scale, out_scale, bias, stride, padding, dilation,
                    groups, impl, cdt, training):
    conf = _opaque_conf(impl, x, weight, a, stride, padding, dilation, groups, cdt, training)
    with torch.autocast(x.device.type, enabled=False):
        return _MixedConv.forward(x, weight, a, in_scale, out_scale, bias, conf).contiguous()


@_opaque_forward.register_fake
def _(x, weight, a, in_scale, out_scale, bias, stride, padding, dilation, groups, impl, cdt,
      training):
    ho, wo = _out_size(x.shape[2:], tuple(weight.shape[3:]), stride, padding, dilation)
    return x.new_empty((x.shape[0], weight.shape[1], ho, wo), dtype=cdt)


@torch.library.custom_op(
    "a2d2c::mixed_conv2d_backward", mutates_args=(),
    schema="(Tensor grad_y, Tensor x, Tensor weight, Tensor a, Tensor? in_scale, "
           "Tensor? out_scale, Tensor? bias, int[] stride, int[] padding, int[] dilation, "
           "int groups, str impl, ScalarType cdt, bool[] needs) -> Tensor[]")
def _opaque_backward(grad_y, x, weight, a, in_scale, out_scale, bias, stride, padding,
                     dilation, groups, impl, cdt, needs):
    conf = _opaque_conf(impl, x, weight, a, stride, padding, dilation, groups, cdt, True)
    with torch.autocast(x.device.type, enabled=False):
        grads = _kernel_backward(conf, tuple(needs), grad_y.contiguous(), x, weight, a,
                                 in_scale, out_scale, bias)
    refs = (x, weight, a, in_scale, out_scale, bias)
    # every slot a tensor (custom ops return no None): unwanted gradients are empty
    return [g.to(r.dtype).reshape(r.shape).contiguous() if g is not None else x.new_empty(0)
            for g, r in zip(grads, refs, strict=True)]


@_opaque_backward.register_fake
def _(grad_y, x, weight, a, in_scale, out_scale, bias, stride, padding, dilation, groups,
      impl, cdt, needs):
    refs = (x, weight, a, in_scale, out_scale, bias)
    return [torch.empty_like(r, memory_format=torch.contiguous_format)
            if need and r is not None else x.new_empty(0)
            for r, need in zip(refs, needs, strict=True)]


def _opaque_setup(ctx, inputs, output):
    x, weight, a, in_scale, out_scale, bias, *args, _training = inputs
    ctx.save_for_backward(x, weight, a, in_scale, out_scale, bias)
    ctx.args = args  # stride, padding, dilation, groups, impl, cdt


def _opaque_grad(ctx, grad_y):
    saved = ctx.saved_tensors
    needs = [bool(n) and t is not None
             for n, t in zip(ctx.needs_input_grad[:6], saved, strict=True)]
    grads = torch.ops.a2d2c.mixed_conv2d_backward(grad_y, *saved, *ctx.args, needs)
    return (*(g if n else None for g, n in zip(grads, needs, strict=True)),
            None, None, None, None, None, None, None)


_opaque_forward.register_autograd(_opaque_grad, setup_context=_opaque_setup)


# --------------------------------------------------------------------------- public op
def _check(x: Tensor, weight: Tensor, groups: int) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"mixed_conv2d: x must be a 4-d tensor (B, C, H, W), got {got}")
    if not isinstance(weight, Tensor) or weight.dim() != 5:
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"mixed_conv2d: weight must be a 5-d tensor (K, O, C/groups, kh, kw), "
                         f"got {got}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"mixed_conv2d: groups must be an int >= 1, got {groups!r}")
    c, o, cg = x.shape[1], weight.shape[1], weight.shape[2]
    if cg * groups != c or o % groups:
        raise ValueError(
            f"mixed_conv2d: weight {tuple(weight.shape)} with groups={groups} needs "
            f"C = groups·C/g = {cg * groups} input channels and O divisible by groups; "
            f"got x with {c} channels and O={o}")


def _check_scale(scale: Tensor | None, name: str, batch: int, size: int, label: str
                 ) -> Tensor | None:
    if scale is None:
        return None
    if not isinstance(scale, Tensor) or scale.dim() != 2 or scale.shape[1] != size or (
            scale.shape[0] not in (1, batch)):
        got = tuple(scale.shape) if isinstance(scale, Tensor) else type(scale).__name__
        raise ValueError(f"mixed_conv2d: {name} must have shape (B, {label}) = ({batch}, "
                         f"{size}) (B may be 1), got {got}")
    return scale.expand(batch, size)


def _check_tap_scale(scale: Tensor | None, batch: int, kernel_size: Sequence[int]
                     ) -> Tensor | None:
    """``tap_scale (B, kh, kw)`` (``B`` may be 1) as ``(B, 1, 1, kh·kw)``, or ``None``."""
    if scale is None:
        return None
    kh, kw = kernel_size
    if not isinstance(scale, Tensor) or scale.dim() != 3 or tuple(scale.shape[1:]) != (
            kh, kw) or scale.shape[0] not in (1, batch):
        got = tuple(scale.shape) if isinstance(scale, Tensor) else type(scale).__name__
        raise ValueError(f"mixed_conv2d: tap_scale must have shape (B, kh, kw) = ({batch}, "
                         f"{kh}, {kw}) (B may be 1), got {got}")
    return scale.reshape(scale.shape[0], 1, 1, kh * kw).expand(batch, 1, 1, kh * kw)


def _mix_bias(bias: Tensor | None, coeff: MixedCoeff, batch: int, num_kernels: int,
              out_channels: int, wdt: torch.dtype) -> Tensor | None:
    """The per-sample bias ``b̃ (B, O)`` (SPEC §5), or ``None``."""
    if bias is None:
        return None
    shape = tuple(bias.shape)
    if shape == (num_kernels, out_channels):
        if coeff.per_tap:
            raise ValueError(
                "mixed_conv2d: a bias of shape (K, O) is mixed with the coefficients, which "
                "needs coeff independent of the tap; pass the per-sample bias (B, O, 1, 1) instead")
        return torch.einsum("bko,ko->bo", coeff.a[..., 0].to(wdt).expand(batch, num_kernels,
                                                                          out_channels), bias)
    if shape == (out_channels,):
        return bias.expand(batch, out_channels)
    if len(shape) == 4 and shape[1:] == (out_channels, 1, 1) and shape[0] in (1, batch):
        return bias.reshape(shape[0], out_channels).expand(batch, out_channels)
    raise ValueError(f"mixed_conv2d: bias must have shape (K, O) = ({num_kernels}, "
                     f"{out_channels}), (B, O, 1, 1) or (O,), got {shape}")


def auto_impl(x_shape: Sequence[int], weight_shape: Sequence[int], coeff_per_tap: bool, *,
              training: bool, device_type: str, stride: Sequence[int] = (1, 1),
              padding: Sequence[int] = (0, 0), dilation: Sequence[int] = (1, 1),
              groups: int = 1, tracing: bool = False,
              candidates: Sequence[str] | None = None, tap_scaled: bool = False) -> str:
    """The path ``impl="auto"`` takes for these shapes (the cheapest modelled exact one).

    ``tracing`` leaves out ``"kernel"``, whose number of groups is the batch size, so that
    one traced graph serves every batch size. ``candidates``: choose among these paths
    only (default: every exact one). ``tap_scaled``: a factored ``tap_scale`` is given
    (its plus form runs on scaled im2col columns).
    """
    b, c, h, w = x_shape[0], int(x_shape[1]), int(x_shape[2]), int(x_shape[3])
    k, o = int(weight_shape[0]), int(weight_shape[1])
    ksize = (int(weight_shape[3]), int(weight_shape[4]))
    ho, wo = _out_size((h, w), ksize, stride, padding, dilation)
    candidates = tuple(exact_impls(coeff_per_tap) if candidates is None else candidates)
    if tracing:
        candidates = tuple(i for i in candidates if i != "kernel")
    return choose_impl(batch=None if tracing else int(b), in_channels=c, out_channels=o,
                       kernel_size=ksize, groups=groups, output_size=(ho, wo), num_kernels=k,
                       training=training, device_type=device_type, candidates=candidates,
                       tap_scaled=tap_scaled)


def exact_impls(coeff_per_tap: bool) -> tuple[str, ...]:
    """The exact CPU/torch paths for coefficients that do (not) depend on the tap."""
    return ("kernel", "unfold") if coeff_per_tap else ("kernel", "unfold", "plus")


def _measured_impl(args: tuple, modelled: str, per_tap: bool, stride: tuple[int, int],
                   padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> str:
    """``impl="auto"`` with benchmarking on: the fastest exact path for this signature,
    timed once on these tensors (:func:`a2d2c.ops.tuning.tuned_choice`)."""
    x = args[0]
    candidates = [modelled, *(i for i in exact_impls(per_tap) if i != modelled)]
    fallible: tuple[str, ...] = ()
    if x.device.type == "cuda" and triton_available():
        # the fused kernels: compiled on first use, may fail; triton_plus only where it is
        # exact and no deterministic algorithms are asked for (its backward uses atomics)
        plus_ok = (not per_tap and args[6] is None  # triton_plus takes no tap_scale
                   and not torch.are_deterministic_algorithms_enabled())
        fallible = TRITON_IMPLS if plus_ok else ("triton",)
        candidates.extend(fallible)
    key = tuning.signature("mixed_conv2d", args, stride, padding, dilation, groups)

    def run(impl: str) -> None:
        tuning.replay(lambda t: mixed_conv2d(*t[:4], stride, padding, dilation, groups,
                                             in_scale=t[4], out_scale=t[5], tap_scale=t[6],
                                             impl=impl), args)

    return tuning.tuned_choice(key, candidates, run, x.device, fallible=fallible)


def triton_available() -> bool:
    """Whether triton is installed (``impl="triton"`` can be tried; it imports lazily)."""
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def mixed_conv2d(
    x: Tensor,
    weight: Tensor,
    coeff: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    *,
    in_scale: Tensor | None = None,
    out_scale: Tensor | None = None,
    tap_scale: Tensor | None = None,
    impl: str = "auto",
) -> Tensor:
    """Convolve each sample with its own mixture of ``K`` base kernels (SPEC §5).

    Args:
        x: ``(B, C, H, W)``.
        weight: ``(K, O, C/groups, kh, kw)``, the base kernels ``W_k``.
        coeff: the mixing coefficients ``a``: ``(B, K)``, ``(B, K, O)``, ``(B, K, kh, kw)``
            or ``(B, K, O, kh, kw)``; ``B``, ``O``, ``kh``, ``kw`` may be 1 (broadcast).
        bias: ``(K, O)`` (mixed like the kernels, ``b̃[b,o] = Σ_k a[b,k,o] b_k[o]``; needs
            ``coeff`` independent of the tap), ``(B, O, 1, 1)`` (per sample, added to the
            output as is), ``(O,)`` or ``None``.
        stride, padding, dilation, groups: as in :func:`torch.nn.functional.conv2d`
            (zero padding; pad explicitly for other modes).
        in_scale: ``(B, C)`` input-channel scale ``s_in``, or ``None``.
        out_scale: ``(B, O)`` output-channel scale ``s_out``, or ``None`` (applied before
            the bias: ``y = s_out ⊙ conv(s_in ⊙ x, W̃) + b̃``).
        tap_scale: ``(B, kh, kw)`` per-sample scale ``s_tap`` of each kernel tap, shared
            by the ``K`` kernels and all channels (ODConv's spatial attention), or
            ``None``: the same as passing ``coeff ⊙ s_tap`` as ``coeff``, but with
            ``coeff`` independent of the tap the product stays factored, so the plus
            form is exact (its input columns are scaled per tap; SPEC §5, ODConv).
        impl: ``"auto"``, ``"kernel"``, ``"unfold"``, ``"plus"`` (only for ``coeff``
            independent of the tap), ``"triton"`` or ``"triton_plus"`` (the fused plus
            form; only for ``coeff`` independent of the tap and no ``tap_scale``).

    Returns:
        ``(B, O, H', W')``. Differentiable in every tensor argument.

    Under ``torch.compile`` the kernel, unfold and Triton paths are one custom operator
    (``torch.ops.a2d2c.mixed_conv2d``, with ``a2d2c.mixed_conv2d_backward``) that runs this
    eager code; ``torch.export``/ONNX export and ``torch.func`` see plain differentiable ops.
    """
    _check(x, weight, groups)
    args = (x, weight, coeff, bias, in_scale, out_scale, tap_scale)  # for a measured choice
    if impl not in IMPLS:
        raise ValueError(f"mixed_conv2d: impl must be one of {IMPLS}, got {impl!r}")
    stride, padding, dilation = (_pair(stride, "stride"), _pair(padding, "padding"),
                                 _pair(dilation, "dilation"))
    b, c, h, w = x.shape
    k, o = weight.shape[:2]
    ksize = tuple(weight.shape[3:])
    for axis, size, kk, p, d in zip(("height", "width"), (h, w), ksize, padding, dilation,
                                    strict=True):
        if size + 2 * p < d * (kk - 1) + 1:
            raise ValueError(f"mixed_conv2d: input {axis} {size} (+ padding {2 * p}) is smaller "
                             f"than the effective kernel size {d * (kk - 1) + 1}")
    cf = canonical_coeff(coeff, b, k, o, ksize)
    in_scale = _check_scale(in_scale, "in_scale", b, c, "C")
    out_scale = _check_scale(out_scale, "out_scale", b, o, "O")
    tap = _check_tap_scale(tap_scale, b, ksize)
    bias_b = _mix_bias(bias, cf, b, k, o, weight.dtype)
    tracing = _is_tracing()
    grads = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad
        for t in (x, weight, coeff, in_scale, out_scale, bias, tap_scale))
    # Factored: the plus form stays exact (the tap scale goes on its input columns); every
    # other path mixes per tap with a[b,k,o,t]·s_tap[b,t] (B·K·Oa·T values).
    # ``plain.per_tap``: what no plus form can take (a tap dependence of ``coeff`` itself).
    plain = cf
    multi_tap = math.prod(ksize) > 1
    factored = tap is not None and not plain.per_tap and multi_tap
    if tap is not None:
        cf = MixedCoeff(cf.a * tap.to(cf.a.dtype), cf.per_channel, cf.per_tap or multi_tap)
    requested = impl
    if impl == "auto":
        impl = auto_impl(x.shape, weight.shape, plain.per_tap, training=grads,
                         device_type=x.device.type, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, tracing=tracing,
                         tap_scaled=factored)
        if tuning.is_benchmark_enabled() and not tracing and not _functorch_active():
            impl = _measured_impl(args, impl, plain.per_tap, stride, padding, dilation,
                                  groups)
    cdt = compute_dtype(x)
    if impl == "plus" and factored:
        return _plus(x, weight, plain, in_scale, out_scale, bias_b, stride, padding, dilation,
                     groups, cdt, tap)
    if impl in ("plus", "triton_plus") and cf.per_tap:
        fix = ("; or pass the tap-dependent part as tap_scale (B, kh, kw)"
               if impl == "plus" and tap is None else "")
        if impl == "triton_plus" and factored:
            fix = "; impl='plus' takes a tap_scale"
        raise ValueError(
            f"mixed_conv2d: impl={impl!r} is exact only for coefficients independent of the "
            f"tap (coeff (B, K) or (B, K, O)); use impl='kernel', 'unfold' or 'triton'{fix}")
    if impl == "plus":
        return _plus(x, weight, cf, in_scale, out_scale, bias_b, stride, padding, dilation,
                     groups, cdt)
    if tracing and _opaque_under_compile():
        # torch.compile: one opaque op (below) that runs the eager paths, chosen for the
        # real shapes at run time, and their own backward; the graph around it is compiled
        return torch.ops.a2d2c.mixed_conv2d(
            x, weight, cf.a, in_scale, out_scale, bias_b, list(stride), list(padding),
            list(dilation), groups, "auto" if requested == "auto" else impl, cdt, grads)
    conf = (stride, padding, dilation, groups, impl, cdt)
    if tracing or _functorch_active():
        return _composite(x, weight, cf.a, in_scale, out_scale, bias_b, conf)
    if not grads:
        # No gradient wanted: skip autograd.Function.apply (it binds the signature of
        # setup_context on every call, ~0.1 ms, a third of a small layer's inference).
        return _MixedConv.forward(x, weight, cf.a, in_scale, out_scale, bias_b, conf)
    return _MixedConv.apply(x, weight, cf.a, in_scale, out_scale, bias_b, conf)
