"""The Triton kernels of ``mixed_conv2d(impl="triton")`` and ``impl="triton_plus"``
against the float64 loop oracle.

``TRITON_INTERPRET`` must be set before the kernels are defined, so without a GPU this
module re-runs itself in a child process with ``TRITON_INTERPRET=1`` (CPU tensors, tiny
shapes, one autotune config); the parent test passes when the child's do. With
``A2D2C_TRITON_DEVICE=cuda`` (scripts/gpu_checks.sh) the cases run on the GPU, bf16 too.
Skipped where triton is not installed: nothing else needs it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CHILD = os.environ.get("A2D2C_TRITON_CHILD") == "1"
DEVICE = os.environ.get("A2D2C_TRITON_DEVICE", "cpu")
HAS_TRITON = importlib.util.find_spec("triton") is not None

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


@pytest.mark.skipif(CHILD, reason="runs in the parent only")
def test_triton_kernels_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", A2D2C_TRITON_CHILD="1",
               A2D2C_TRITON_DEVICE="cpu")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", __file__],
        cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


@pytest.mark.skipif(CHILD, reason="runs in the parent only")
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_triton_kernels_compile_for_an_h100_class_gpu(dtype):
    """No GPU needed: Triton lowers every kernel to PTX and cubin for sm_90."""
    import triton
    from triton.backends import backends
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if "nvidia" not in backends:
        pytest.skip("this triton build has no NVIDIA backend")

    from a2d2c.ops import _triton_mixed as tm

    flags = dict(HAS_IN=True, HAS_OUT=True, HAS_BIAS=True)
    kernels = [(tm._fwd, {}), (tm._bwd_input, {}), (tm._bwd_kernel, {}),
               (tm._plus_fwd, dict(GRAD=False)), (tm._plus_fwd, dict(GRAD=True)),
               (tm._plus_bwd_input, {}), (tm._plus_bwd_weight, {})]
    for kernel, mode in kernels:
        fn = kernel.fn  # under the autotuner
        consts = dict(KH=3, KW=3, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, DOT_F32=dtype == "fp32",
                      **mode)
        consts.update({k: v for k, v in flags.items() if k in fn.arg_names})
        data = {"x_ptr", "y_ptr", "gy_ptr", "gx_ptr"}  # the rest (weights, attention) fp32
        sig = {n: "constexpr" if n in consts else (f"*{dtype}" if n in data else "*fp32")
               if n.endswith("_ptr") else "i32" for n in fn.arg_names}
        compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                                  target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], fn.__name__


# --------------------------------------------------------------------------- child cases
B, K = 2, 3
# (C, O, kernel, stride, padding, dilation, groups, H, W): the layer tests' geometries at
# sizes that do not divide the 16-wide interpreter blocks
GEOMETRIES = {
    "3x3": (6, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, 7, 6),
    "strided_grouped": (6, 4, (3, 2), (2, 1), (1, 0), (1, 2), 2, 7, 5),
    "3x5_dilated": (5, 3, (3, 5), (1, 1), (0, 2), (2, 1), 1, 9, 8),
    "1x1_stride2": (6, 6, (1, 1), (2, 2), (0, 0), (1, 1), 1, 5, 7),
    "depthwise": (4, 4, (3, 3), (1, 1), (2, 2), (2, 2), 4, 6, 5),
}
COEFFS = {"BK": lambda o, kh, kw: (B, K), "BKO": lambda o, kh, kw: (B, K, o),
          "BKkk": lambda o, kh, kw: (B, K, kh, kw)}
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=2e-2, atol=3e-2),
       torch.bfloat16: dict(rtol=5e-2, atol=1e-1)}


def _case(geo, coeff, dtype, scales, bias, channels_last, impl="triton"):
    from _mixed_oracle import oracle
    from a2d2c.ops import mixed_conv2d

    c, o, (kh, kw), stride, padding, dilation, g, h, w = GEOMETRIES[geo]
    torch.manual_seed(0)
    d = torch.float64
    x = torch.randn(B, c, h, w, dtype=d)
    weight = torch.randn(K, o, c // g, kh, kw, dtype=d) / (c // g * kh * kw) ** 0.5
    a = torch.rand(*COEFFS[coeff](o, kh, kw), dtype=d)
    s_in = torch.rand(B, c, dtype=d) if scales else None
    s_out = torch.rand(B, o, dtype=d) if scales else None
    b_t = torch.randn(B, o, 1, 1, dtype=d) if bias else None
    leaves = [t for t in (x, weight, a, s_in, s_out, b_t) if t is not None]
    for t in leaves:
        t.requires_grad_(True)
    want = oracle(x, weight, a, b_t, stride, padding, dilation, g, s_in, s_out)
    gy = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, leaves, gy)

    def cast(t, low):
        if t is None:
            return None
        t = t.detach().to(DEVICE, low if low else torch.float32)
        return t.requires_grad_(True)

    xl = cast(x, dtype)
    if channels_last:
        xl = xl.detach().to(memory_format=torch.channels_last).requires_grad_(True)
    wl = cast(weight, dtype)
    al, sil, sol, bl = cast(a, None), cast(s_in, None), cast(s_out, None), cast(b_t, None)
    got = mixed_conv2d(xl, wl, al, bl, stride, padding, dilation, g, in_scale=sil,
                       out_scale=sol, impl=impl)
    assert got.dtype == dtype and got.shape == want.shape
    if channels_last:
        assert got.is_contiguous(memory_format=torch.channels_last)
    live = [t for t in (xl, wl, al, sil, sol, bl) if t is not None]
    got_grads = torch.autograd.grad(got, live, gy.to(DEVICE, dtype))
    tol = TOL[dtype]
    torch.testing.assert_close(got.double().cpu(), want.detach(), **tol)
    names = [n for n, t in zip(("x", "weight", "coeff", "in_scale", "out_scale", "bias"),
                               (x, weight, a, s_in, s_out, b_t), strict=True) if t is not None]
    for name, gg, gw in zip(names, got_grads, want_grads, strict=True):
        scale = max(1.0, gw.abs().max().item())
        torch.testing.assert_close(gg.double().cpu() / scale, gw / scale, **tol,
                                   msg=lambda m, n=name: f"grad of {n}: {m}")


DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
CHILD_CASES = (
    [(geo, "BKkk", dt, True, True, False) for geo in GEOMETRIES for dt in DTYPES]
    + [("strided_grouped", "BK", torch.float32, False, False, False),
       ("3x3", "BKO", torch.float16, False, True, False),
       ("3x3", "BKkk", torch.float32, True, False, True),
       ("strided_grouped", "BKO", torch.float16, True, True, True)]
)


@pytest.mark.skipif(not CHILD, reason="run by test_triton_kernels_under_the_interpreter")
@pytest.mark.parametrize("geo,coeff,dtype,scales,bias,channels_last", CHILD_CASES)
def test_triton_matches_float64_oracle(geo, coeff, dtype, scales, bias, channels_last):
    _case(geo, coeff, dtype, scales, bias, channels_last)


# The fused plus form: coefficients independent of the tap ((B, K), (B, K, O); ODConv's
# (B, K, kh, kw) with 1x1 kernels), every geometry; the 16-row interpreter blocks do not
# divide the positions per sample (e.g. 7·6 = 42), so some blocks span two samples
PLUS_CASES = (
    [(geo, "BKO", torch.float32, True, True, False) for geo in GEOMETRIES]
    + [("1x1_stride2", "BKkk", torch.float32, True, True, False),
       ("strided_grouped", "BK", torch.float16, True, False, False),
       ("3x3", "BK", torch.float32, False, False, True),
       ("depthwise", "BKO", torch.float16, False, True, True)]
    + ([("3x3", "BKO", torch.bfloat16, True, True, False)] if DEVICE == "cuda" else [])
)


@pytest.mark.skipif(not CHILD, reason="run by test_triton_kernels_under_the_interpreter")
@pytest.mark.parametrize("geo,coeff,dtype,scales,bias,channels_last", PLUS_CASES)
def test_triton_plus_matches_float64_oracle(geo, coeff, dtype, scales, bias, channels_last):
    _case(geo, coeff, dtype, scales, bias, channels_last, impl="triton_plus")


@pytest.mark.skipif(not CHILD, reason="run by test_triton_kernels_under_the_interpreter")
def test_triton_plus_splits_the_kernel_gradient():
    """Several (sample, position) runs add up atomically in the base-kernel gradient."""
    from _mixed_oracle import oracle
    from a2d2c.ops import _triton_mixed as tm
    from a2d2c.ops import mixed_conv2d

    torch.manual_seed(1)
    d = torch.float64
    x = torch.randn(5, 2, 13, 11, dtype=d)  # 715 (sample, position) pairs: 3 runs of 256
    weight = torch.randn(2, 3, 2, 3, 3, dtype=d, requires_grad=True)
    a = torch.rand(5, 2, dtype=d)
    assert tm._plus_split(5 * 13 * 11, 1) == (3, 256)
    want = oracle(x, weight, a, None, (1, 1), (1, 1), (1, 1), 1, None, None)
    gy = torch.randn_like(want)
    (want_w,) = torch.autograd.grad(want, [weight], gy)
    wl = weight.detach().float().to(DEVICE).requires_grad_(True)
    got = mixed_conv2d(x.float().to(DEVICE), wl, a.float().to(DEVICE), padding=1,
                       impl="triton_plus")
    (got_w,) = torch.autograd.grad(got, [wl], gy.float().to(DEVICE))
    torch.testing.assert_close(got_w.double().cpu(), want_w, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not CHILD, reason="run by test_triton_kernels_under_the_interpreter")
def test_triton_layers_match_kernel_form():
    """Every layer with impl='triton' / 'triton_plus' against the same layer with
    impl='kernel' (outputs and parameter gradients)."""
    import a2d2c

    dtype = torch.float32
    cases = [(a2d2c.CondConv2d, 3, ("triton", "triton_plus")),
             (a2d2c.DynamicConv2d, 3, ("triton", "triton_plus")),
             (a2d2c.ODConv2d, 3, ("triton",)), (a2d2c.ODConv2d, 1, ("triton_plus",)),
             (a2d2c.A2D2Conv2d, 3, ("triton", "triton_plus"))]
    for cls, size, impls in cases:
        torch.manual_seed(0)
        layer = cls(5, 6, size, padding=size // 2, num_kernels=3).to(DEVICE, dtype)
        x = torch.randn(2, 5, 6, 7, device=DEVICE, dtype=dtype)
        results = {}
        for impl in ("kernel", *impls):
            layer.impl = impl
            torch.manual_seed(1)  # A2D2C draws its sampled positions
            y = layer(x)
            grads = torch.autograd.grad(y, list(layer.parameters()), torch.ones_like(y),
                                        allow_unused=True)
            results[impl] = (y, grads)
        want_y, want_g = results["kernel"]
        for impl in impls:
            y, grads = results[impl]
            torch.testing.assert_close(y, want_y, rtol=1e-4, atol=1e-4,
                                       msg=lambda m, i=impl, c=cls: f"{c.__name__} {i}: {m}")
            for gg, gw in zip(grads, want_g, strict=True):
                if gw is not None:
                    torch.testing.assert_close(gg, gw, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not CHILD, reason="run by test_triton_kernels_under_the_interpreter")
def test_triton_plus_saves_no_responses():
    """Training memory: the fused plus form saves its inputs only; the torch plus form
    saves the K·O response maps (here 4·8 maps of 8×8, batch 2)."""
    from a2d2c.ops import mixed_conv2d
    from a2d2c.tools.benchmark import saved_activation_bytes

    torch.manual_seed(0)
    k, c, o, b = 4, 3, 8, 2
    x = torch.randn(b, c, 8, 8, device=DEVICE, requires_grad=True)
    weight = torch.randn(k, o, c, 3, 3, device=DEVICE, requires_grad=True)
    coeff = torch.rand(b, k, o, device=DEVICE, requires_grad=True)

    def saved(impl):
        return saved_activation_bytes(
            lambda: mixed_conv2d(x, weight, coeff, padding=1, impl=impl), exclude=[weight])

    inputs = (x.numel() + coeff.numel()) * 4
    responses = b * k * o * 8 * 8 * 4
    assert saved("triton_plus") == inputs
    assert saved("plus") >= responses


@pytest.mark.skipif(not CHILD, reason="run by test_triton_kernels_under_the_interpreter")
@pytest.mark.parametrize("impl", ["triton", "triton_plus"])
def test_triton_paths_under_autocast(impl):
    """Under autocast the kernels convolve in the autocast dtype; float32 leaves get
    float32 gradients, close to the float64 oracle's."""
    from _mixed_oracle import oracle
    from a2d2c.ops import mixed_conv2d

    low = torch.float16 if DEVICE == "cuda" else torch.bfloat16
    torch.manual_seed(0)
    d = torch.float64
    x = torch.randn(2, 4, 6, 5, dtype=d, requires_grad=True)
    weight = (torch.randn(3, 5, 4, 3, 3, dtype=d) / 6).requires_grad_(True)
    a = torch.rand(2, 3, 5, dtype=d, requires_grad=True)
    want = oracle(x, weight, a, None, (1, 1), (1, 1), (1, 1), 1, None, None)
    gy = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, [x, weight, a], gy)
    leaves = [t.detach().float().to(DEVICE).requires_grad_(True) for t in (x, weight, a)]
    with torch.autocast(DEVICE, dtype=low):
        got = mixed_conv2d(*leaves, padding=1, impl=impl)
    assert got.dtype == low
    grads = torch.autograd.grad(got, leaves, gy.to(DEVICE, low))
    tol = TOL[torch.bfloat16]
    torch.testing.assert_close(got.double().cpu(), want.detach(), **tol)
    for gg, gw in zip(grads, want_grads, strict=True):
        assert gg.dtype == torch.float32
        scale = max(1.0, gw.abs().max().item())
        torch.testing.assert_close(gg.double().cpu() / scale, gw / scale, **tol)


@pytest.mark.skipif(not CHILD, reason="run by test_triton_kernels_under_the_interpreter")
def test_triton_plus_backward_under_deterministic_algorithms():
    """Its atomics are not deterministic: an error under use_deterministic_algorithms(True)
    (a warning with warn_only=True, and still the right gradient)."""
    from a2d2c.ops import mixed_conv2d

    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5, device=DEVICE)
    weight = torch.randn(2, 4, 3, 3, 3, device=DEVICE, requires_grad=True)
    a = torch.rand(2, 2, device=DEVICE)
    (want,) = torch.autograd.grad(mixed_conv2d(x, weight, a, padding=1, impl="kernel").sum(),
                                  [weight])
    try:
        torch.use_deterministic_algorithms(True)
        y = mixed_conv2d(x, weight, a, padding=1, impl="triton_plus")  # forward: no atomics
        with pytest.raises(RuntimeError, match=r"triton_plus.*not deterministic"):
            torch.autograd.grad(y.sum(), [weight])
        torch.use_deterministic_algorithms(True, warn_only=True)
        y = mixed_conv2d(x, weight, a, padding=1, impl="triton_plus")
        with pytest.warns(UserWarning, match="not deterministic"):
            (got,) = torch.autograd.grad(y.sum(), [weight])
    finally:
        torch.use_deterministic_algorithms(False)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
