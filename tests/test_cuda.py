"""CUDA correctness: every registered conv type agrees with its own CPU float64 result.

The CPU paths are checked against independent oracles elsewhere; here the independent
fact is the CPU result itself: the same parameters and the same explicit points must
give the same output and gradients on the GPU (float64 tight, float32 loose), and bf16
autocast must stay close to float32. Skipped without CUDA (CI has none); run on a GPU
machine with ``python3 -m pytest -q tests/test_cuda.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch

import a2d2c

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CONV_TYPES = a2d2c.list_conv_layers()


def _build(conv_type: str, dtype: torch.dtype) -> torch.nn.Module:
    # static and DCD have no K (DCD: one static kernel plus a dynamic residual)
    kwargs = {} if conv_type in ("static", "dcd") else {"num_kernels": 4}
    torch.manual_seed(0)
    layer = a2d2c.create_conv2d(conv_type, 16, 24, 3, stride=2, padding=1, **kwargs)
    return layer.to(dtype)


def _run(layer, x, points=None):
    x = x.clone().requires_grad_(True)
    y = layer(x) if points is None else layer(x, points=points)
    probe = torch.linspace(-1, 1, y.numel(), device=y.device, dtype=y.dtype).view_as(y)
    (y * probe).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in layer.named_parameters()}
    return y.detach(), x.grad.detach(), grads


def _compare(cpu, gpu, rtol, atol):
    y0, gx0, g0 = cpu
    y1, gx1, g1 = gpu
    torch.testing.assert_close(y1.cpu(), y0, rtol=rtol, atol=atol)
    torch.testing.assert_close(gx1.cpu(), gx0, rtol=rtol, atol=atol)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name].cpu(), g0[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("conv_type", CONV_TYPES)
@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-9, 1e-9),
                                             (torch.float32, 2e-3, 2e-4)])
def test_cuda_matches_cpu(conv_type, dtype, rtol, atol):
    layer = _build(conv_type, dtype)
    x = torch.randn(5, 16, 20, 18, dtype=dtype, generator=torch.Generator().manual_seed(1))
    points = None
    if isinstance(layer, a2d2c.A2D2Conv2d):
        # Explicit random points: the same positions on both devices, sampling active.
        points = torch.stack([torch.randperm(10 * 9)[:30] for _ in range(5)]).view(5, 1, 30)
    cpu = _run(layer, x, points)
    gpu_layer = copy.deepcopy(layer).cuda()
    gpu = _run(gpu_layer, x.cuda(), None if points is None else points.cuda())
    _compare(cpu, gpu, rtol, atol)


@pytest.mark.parametrize("impl", ["kernel", "plus", "auto"])
def test_a2d2c_random_sampling_on_cuda_is_finite_and_differs(impl):
    layer = a2d2c.A2D2Conv2d(16, 24, 3, padding=1, num_kernels=4, num_points=20, impl=impl,
                             device="cuda")
    x = torch.randn(3, 16, 16, 16, device="cuda")
    y1, y2 = layer(x), layer(x)
    assert torch.isfinite(y1).all() and not torch.equal(y1, y2)
    layer.eval()
    assert torch.equal(layer(x), layer(x))


@pytest.mark.parametrize("conv_type", CONV_TYPES)
def test_cuda_bf16_autocast_close_to_float32(conv_type):
    layer = _build(conv_type, torch.float32).cuda().eval()
    x = torch.randn(4, 16, 24, 24, device="cuda").to(memory_format=torch.channels_last)
    ref = layer(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    err = (y.float() - ref).norm() / ref.norm()
    assert err < 2e-2, f"{conv_type}: relative error {err:.3g} under bf16 autocast"
    layer.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = layer(x.requires_grad_(True))
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)
