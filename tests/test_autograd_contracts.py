"""Autograd contracts of the dynamic layers: double backward and ``torch.func``.

Second derivatives are checked numerically (``gradgradcheck``: finite differences of the
analytic gradient), ``torch.func.grad`` against ``torch.autograd.grad`` and ``vmap``
against a Python loop over the mapped dimension.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, vmap

import a2d2c
from a2d2c.ops import mixed_conv2d

D = torch.float64
LAYERS = {
    "a2d2c": lambda **kw: a2d2c.A2D2Conv2d(4, 6, 3, padding=1, num_points=5, **kw),
    "condconv": lambda **kw: a2d2c.CondConv2d(4, 6, 3, padding=1, num_kernels=3, **kw),
    "dynamicconv": lambda **kw: a2d2c.DynamicConv2d(4, 6, 3, padding=1, num_kernels=3, **kw),
    "odconv": lambda **kw: a2d2c.ODConv2d(4, 6, 3, padding=1, num_kernels=3, **kw),
}
IMPLS = {"a2d2c": ("kernel", "unfold", "plus"), "condconv": ("kernel", "unfold", "plus"),
         "dynamicconv": ("kernel", "unfold", "plus"), "odconv": ("kernel", "unfold")}
CASES = [(name, impl) for name in LAYERS for impl in IMPLS[name]]


def _layer(name, impl):
    torch.manual_seed(0)
    kw = dict(impl=impl, dtype=D)
    if name == "a2d2c":
        kw["sampling"] = "fixed"  # deterministic, so repeated calls see the same function
    return LAYERS[name](**kw)


@pytest.mark.parametrize("impl", ["kernel", "unfold"])
@pytest.mark.parametrize("coeff_shape", [(2, 3, 4), (2, 3, 3, 2)])
def test_op_second_derivatives_match_finite_differences(impl, coeff_shape):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 4, dtype=D, requires_grad=True)
    w = torch.randn(3, 4, 2, 3, 2, dtype=D, requires_grad=True)
    a = torch.rand(*coeff_shape, dtype=D, requires_grad=True)
    s_in = torch.rand(2, 4, dtype=D, requires_grad=True)
    s_out = torch.rand(2, 4, dtype=D, requires_grad=True)

    def fn(x, w, a, s_in, s_out):
        return mixed_conv2d(x, w, a, None, (2, 1), (1, 0), (1, 2), 2, in_scale=s_in,
                            out_scale=s_out, impl=impl)

    assert torch.autograd.gradgradcheck(fn, (x, w, a, s_in, s_out), fast_mode=True)


@pytest.mark.parametrize("name,impl", CASES)
def test_double_backward(name, impl):
    """Gradient-penalty style: d/dθ ‖∂L/∂x‖², checked against finite differences of it."""
    layer = _layer(name, impl)
    x = torch.randn(2, 4, 5, 5, dtype=D, requires_grad=True)
    weight = layer.weight

    def penalty():
        (gx,) = torch.autograd.grad(layer(x).pow(2).sum(), x, create_graph=True)
        return gx.pow(2).sum()

    (analytic,) = torch.autograd.grad(penalty(), weight)
    # central difference of the penalty along a random direction of the base kernels
    direction = torch.randn_like(weight)
    eps = 1e-6
    with torch.no_grad():
        weight.add_(eps * direction)
    plus = penalty().item()
    with torch.no_grad():
        weight.sub_(2 * eps * direction)
    minus = penalty().item()
    with torch.no_grad():
        weight.add_(eps * direction)
    numeric = (plus - minus) / (2 * eps)
    assert abs((analytic * direction).sum().item() - numeric) <= 1e-5 * max(1.0, abs(numeric))


@pytest.mark.parametrize("name,impl", CASES)
def test_torch_func_grad_matches_autograd(name, impl):
    layer = _layer(name, impl)
    x = torch.randn(2, 4, 5, 5, dtype=D)
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(p, x):
        return functional_call(layer, p, (x,)).pow(2).sum()

    got = grad(loss)(params, x)
    want = torch.autograd.grad(layer(x).pow(2).sum(), list(layer.parameters()))
    for (key, g), w in zip(got.items(), want, strict=True):
        torch.testing.assert_close(g, w, msg=key)


@pytest.mark.parametrize("name,impl", CASES)
def test_vmap_matches_a_loop(name, impl):
    layer = _layer(name, impl).eval()
    xs = torch.randn(3, 2, 4, 5, 5, dtype=D)  # vmap over the leading 3, batch of 2 inside
    with torch.no_grad():
        got = vmap(layer)(xs)
        want = torch.stack([layer(x) for x in xs])
    torch.testing.assert_close(got, want)
