"""A2D2Conv2d against independent facts: a per-sample loop oracle, nn.Conv2d, invariants."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import a2d2c
from a2d2c import A2D2Conv2d


# --------------------------------------------------------------------------- the oracle
def oracle(layer: A2D2Conv2d, x: torch.Tensor, points: torch.Tensor | None) -> torch.Tensor:
    """SPEC §1 written as loops: per sample, per draw, per kernel, with plain F.conv2d.

    ``points``: (B, N, M) flattened output positions, or None for all positions.
    Shares nothing with the layer but its parameters.
    """
    stride, dilation, groups = layer.stride, layer.dilation, layer.groups
    ph, pw = layer.padding
    if layer.padding_mode != "zeros":
        x = F.pad(x, (pw, pw, ph, ph), mode=layer.padding_mode)
        ph = pw = 0
    weight, bias = layer.weight, layer.bias
    n_k, n_out = weight.shape[0], weight.shape[1]
    tau = float(layer.temperature)
    outputs = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1]
        feats = []
        for k in range(n_k):
            fk = F.conv2d(xb, weight[k], None if bias is None else bias[k], stride, (ph, pw),
                          dilation, groups)
            feats.append(fk[0].flatten(1))  # (O, L)
        draws = [None] if points is None else list(points[b])
        pi = torch.zeros(n_k, n_out, dtype=x.dtype)
        for sel in draws:
            logits = []
            for k in range(n_k):
                chosen = feats[k] if sel is None else feats[k][:, sel]
                pbar = chosen.sum(1) / chosen.shape[1]
                if layer.head == "mlp":
                    hidden = torch.relu(layer.fc1.weight @ pbar + layer.fc1.bias)
                    pbar = layer.fc2.weight @ hidden + layer.fc2.bias
                logits.append(pbar)
            z = torch.stack(logits) / tau  # (K, O)
            for o in range(n_out):
                e = torch.exp(z[:, o] - z[:, o].max())
                pi[:, o] = pi[:, o] + e / e.sum()
        pi = pi / len(draws)
        w_b = sum(pi[k].view(-1, 1, 1, 1) * weight[k] for k in range(n_k))
        b_b = None if bias is None else sum(pi[k] * bias[k] for k in range(n_k))
        outputs.append(F.conv2d(xb, w_b, b_b, stride, (ph, pw), dilation, groups))
    return torch.cat(outputs)


def make_layer(dtype=torch.float64, **kw) -> A2D2Conv2d:
    args = dict(in_channels=4, out_channels=6, kernel_size=3, padding=1)
    args.update({k: kw.pop(k) for k in list(kw) if k in (
        "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
        "bias", "padding_mode")})
    layer = A2D2Conv2d(**args, dtype=dtype, **kw)
    with torch.no_grad():  # spread the logits so softmax is far from uniform
        layer.weight.mul_(3.0)
    return layer


def output_hw(layer: A2D2Conv2d, h: int, w: int) -> tuple[int, int]:
    return layer.geometry.output_size(h, w)


def random_points(batch, draws, m, length, gen):
    return torch.stack([torch.stack([torch.randperm(length, generator=gen)[:m]
                                     for _ in range(draws)]) for _ in range(batch)])


# every exact computation; "auto" resolves to one of them
EXACT_IMPLS = ["kernel", "unfold", "plus"]

GEOMETRIES = [
    dict(),
    dict(stride=2),
    dict(padding=0, bias=False),
    dict(padding=(1, 2), dilation=2),
    dict(groups=2, kernel_size=(3, 1), padding=(1, 0)),
    dict(stride=(2, 1), padding=2, dilation=(2, 1), padding_mode="reflect"),
    dict(kernel_size=1, padding=0, groups=2),
]


@pytest.mark.parametrize("impl", EXACT_IMPLS)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: ",".join(f"{k}={v}" for k, v in
                                                                          g.items()) or "3x3")
@pytest.mark.parametrize("head,draws", [("direct", 1), ("mlp", 2)])
def test_matches_loop_oracle_float64(impl, geometry, head, draws):
    torch.manual_seed(0)
    layer = make_layer(num_kernels=3, num_points=5, num_draws=draws, head=head, impl=impl,
                       **geometry)
    x = torch.randn(3, 4, 9, 8, dtype=torch.float64, requires_grad=True)
    ho, wo = output_hw(layer, 9, 8)
    pts = random_points(3, draws, min(5, ho * wo), ho * wo, torch.Generator().manual_seed(1))
    y = layer(x, points=pts)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = oracle(layer, x_ref, pts)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)

    g = torch.randn_like(y)
    params = [p for p in layer.parameters()]
    grads = torch.autograd.grad(y, [x, *params], g)
    grads_ref = torch.autograd.grad(y_ref, [x_ref, *params], g)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("impl", EXACT_IMPLS)
@pytest.mark.parametrize("mode", ["train-random", "eval-global"])
def test_matches_oracle_float32(impl, mode):
    """float32: outputs within rtol 1e-4/atol 1e-5 and gradients within 1e-3/1e-4."""
    torch.manual_seed(0)
    layer = make_layer(dtype=torch.float32, in_channels=16, out_channels=24, num_kernels=4,
                       num_points=20, impl=impl, head="mlp", stride=2)
    x = torch.randn(4, 16, 14, 14, requires_grad=True)
    if mode == "eval-global":
        layer.eval()
        pts = None
        y = layer(x)
    else:
        torch.manual_seed(5)
        pts = layer.sample_points(4, output_hw(layer, 14, 14))
        torch.manual_seed(5)
        y = layer(x)  # the forward draws the same points as sample_points
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = oracle(layer, x_ref, pts)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(y)
    params = list(layer.parameters())
    for got, want in zip(torch.autograd.grad(y, [x, *params], g),
                         torch.autograd.grad(y_ref, [x_ref, *params], g), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("head", ["direct", "mlp"])
def test_kernel_form_equals_plus_form(head):
    torch.manual_seed(0)
    layer = make_layer(in_channels=8, out_channels=8, num_kernels=4, num_points=7, num_draws=3,
                       head=head, stride=2, groups=2)
    x = torch.randn(5, 8, 11, 11, dtype=torch.float64)
    pts = layer.sample_points(5, output_hw(layer, 11, 11))
    results = {}
    for impl in EXACT_IMPLS:
        layer.impl = impl
        layer.zero_grad()
        xi = x.clone().requires_grad_(True)
        y = layer(xi, points=pts)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        results[impl] = (y.detach(), xi.grad, [p.grad.clone() for p in layer.parameters()])
    yp, gxp, gpp = results["plus"]
    for impl in ("kernel", "unfold"):
        yk, gxk, gpk = results[impl]
        torch.testing.assert_close(yk, yp, rtol=1e-11, atol=1e-12)
        torch.testing.assert_close(gxk, gxp, rtol=1e-10, atol=1e-11)
        for a, b in zip(gpk, gpp, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("impl", EXACT_IMPLS)
def test_single_kernel_equals_conv2d(impl):
    torch.manual_seed(0)
    layer = A2D2Conv2d(5, 7, 3, stride=2, padding=1, dilation=1, num_kernels=1, impl=impl,
                       dtype=torch.float64)
    conv = nn.Conv2d(5, 7, 3, stride=2, padding=1, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(layer.weight[0])
        conv.bias.copy_(layer.bias[0])
    x = torch.randn(3, 5, 10, 10, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", EXACT_IMPLS)
def test_enough_points_equals_global(impl):
    torch.manual_seed(0)
    kwargs = dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, num_kernels=3,
                  impl=impl, dtype=torch.float64)
    many = A2D2Conv2d(**kwargs, num_points=64)  # output 8x8 = 64 positions
    glob = A2D2Conv2d(**kwargs, sampling="global")
    glob.load_state_dict(many.state_dict())
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(many(x), glob(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(many(x), oracle(many, x, None), rtol=1e-10, atol=1e-10)


def test_random_sampling_is_uniform_without_replacement():
    """All C(5, 2) = 10 subsets equally likely (chi-square), no repeats, fresh per call."""
    layer = A2D2Conv2d(1, 1, 1, num_points=2, num_draws=4)
    torch.manual_seed(0)
    pts = layer.sample_points(5000, (1, 5))  # (B, N, M), 20000 draws
    assert pts.shape == (5000, 4, 2)
    assert bool((pts[..., 0] != pts[..., 1]).all()), "sampled with replacement"
    assert int(pts.min()) >= 0 and int(pts.max()) < 5
    pairs = pts.sort(-1).values
    code = pairs[..., 0] * 5 + pairs[..., 1]
    subsets = [a * 5 + b for a, b in itertools.combinations(range(5), 2)]
    counts = torch.stack([(code == s).sum() for s in subsets]).double()
    assert int(counts.sum()) == code.numel()
    expected = code.numel() / len(subsets)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 33.7, f"chi-square {chi2:.1f} (9 dof, p < 1e-4): sampling is not uniform"


def test_random_points_differ_per_sample_draw_and_pass():
    layer = A2D2Conv2d(1, 1, 3, padding=1, num_points=10, num_draws=3)
    a = layer.sample_points(4, (16, 16))
    b = layer.sample_points(4, (16, 16))
    assert not torch.equal(a.sort(-1).values, b.sort(-1).values)
    s = a.sort(-1).values
    assert not torch.equal(s[0], s[1])
    assert not torch.equal(s[0, 0], s[0, 1])
    # and forward really uses fresh points: two training passes differ
    layer = make_layer(num_points=3)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    assert not torch.allclose(layer(x), layer(x))


_FIXED_SNIPPET = (
    "import torch, a2d2c;"
    "torch.manual_seed({seed});"
    "layer = a2d2c.A2D2Conv2d(1, 1, 3, padding=1, num_points=7, num_draws=2, sampling='fixed');"
    "print(layer.sample_points(1, (9, 11))[0].tolist())"
)


def _same_source_env() -> dict[str, str]:
    """Environment under which a subprocess imports this very a2d2c source tree."""
    src = str(Path(a2d2c.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [src, *filter(None, [os.environ.get("PYTHONPATH")])])}


def test_fixed_points_identical_across_processes_and_inputs():
    layer = A2D2Conv2d(1, 1, 3, padding=1, num_points=7, num_draws=2, sampling="fixed")
    here = layer.sample_points(3, (9, 11))
    assert torch.equal(here[0], here[1]) and torch.equal(here[0], here[2])
    assert not torch.equal(here[0, 0].sort().values, here[0, 1].sort().values)
    again = A2D2Conv2d(1, 1, 3, padding=1, num_points=7, num_draws=2, sampling="fixed")
    assert torch.equal(again.sample_points(1, (9, 11))[0], here[0])
    for seed in (1, 2):
        out = subprocess.run([sys.executable, "-c", _FIXED_SNIPPET.format(seed=seed)],
                             capture_output=True, text=True, check=True, env=_same_source_env()
                             ).stdout
        assert eval(out) == here[0].tolist()
    # eval_sampling="fixed" turns random sampling into the fixed sets in eval()
    rnd = A2D2Conv2d(1, 1, 3, padding=1, num_points=7, num_draws=2, eval_sampling="fixed").eval()
    assert torch.equal(rnd.sample_points(1, (9, 11)), here[:1])


def test_eval_is_deterministic_and_global_by_default():
    torch.manual_seed(0)
    layer = make_layer(num_points=3).eval()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    assert torch.equal(layer(x), layer(x))
    assert layer.sample_points(2, (8, 8)) is None
    torch.testing.assert_close(layer(x), oracle(layer, x, None), rtol=1e-10, atol=1e-10)


def test_global_sampling_inference_then_training():
    """All-position descriptor under inference_mode, then a training step on the same layer
    (nothing made under inference_mode may be saved for backward), for two input sizes:
    outputs and gradients stay the loop oracle's."""
    torch.manual_seed(0)
    layer = make_layer(sampling="global", stride=2, impl="kernel")
    for h, w in ((9, 8), (6, 7)):
        x = torch.randn(2, 4, h, w, dtype=torch.float64)
        with torch.inference_mode():
            got = layer.eval()(x)
        torch.testing.assert_close(got, oracle(layer, x, None), rtol=1e-10, atol=1e-10)
        layer.train()
        xg = x.clone().requires_grad_()
        y = layer(xg)
        torch.testing.assert_close(y, oracle(layer, xg, None), rtol=1e-10, atol=1e-10)
        gy = torch.randn_like(y)
        leaves = [xg, layer.weight]
        for a, b in zip(torch.autograd.grad(y, leaves, gy),
                        torch.autograd.grad(oracle(layer, xg, None), leaves, gy), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", EXACT_IMPLS)
@pytest.mark.parametrize("head", ["direct", "mlp"])
def test_gradcheck(impl, head):
    # hundreds of tiny forwards: one thread avoids OpenMP stalls on a shared machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _gradcheck(impl, head)
    finally:
        torch.set_num_threads(threads)


def _gradcheck(impl, head):
    torch.manual_seed(0)
    layer = A2D2Conv2d(2, 4, 3, stride=2, padding=1, num_kernels=3, num_points=3, num_draws=2,
                       head=head, impl=impl, dtype=torch.float64)
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    pts = random_points(2, 2, 3, 9, torch.Generator().manual_seed(0))
    params = tuple(layer.parameters())

    def fn(inp, *ps):
        return torch.func.functional_call(
            layer, dict(zip([n for n, _ in layer.named_parameters()], ps, strict=True)),
            (inp,), {"points": pts})

    assert torch.autograd.gradcheck(fn, (x, *[p.detach().requires_grad_(True) for p in params]))


class _CountConvs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.mkldnn_convolution,
                                   torch.ops.aten._convolution):
            self.calls.append(args[1].shape)
        return func(*args, **(kwargs or {}))


def test_kernel_form_never_computes_k_feature_maps_or_loops_over_batch():
    layer = A2D2Conv2d(8, 16, 3, padding=1, num_kernels=4, num_points=10, impl="kernel")
    x = torch.randn(6, 8, 12, 12)
    with _CountConvs() as counter:
        layer(x)
    # one grouped conv for the whole batch, producing B·O channels (not K·O per sample)
    assert len(counter.calls) == 1, counter.calls
    assert counter.calls[0][0] == 6 * 16
    layer.impl = "plus"
    with _CountConvs() as counter:
        layer(x)
    assert len(counter.calls) == 1 and counter.calls[0][0] == 4 * 16  # one dense K·O conv


@pytest.mark.parametrize("impl", EXACT_IMPLS)
def test_batch_size_one_training_and_backward(impl):
    layer = A2D2Conv2d(3, 8, 3, padding=1, head="mlp", impl=impl).train()
    y = layer(torch.randn(1, 3, 16, 16))
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("impl", EXACT_IMPLS)
def test_channels_last_input(impl):
    torch.manual_seed(0)
    layer = A2D2Conv2d(8, 8, 3, padding=1, num_points=10, impl=impl).eval()
    x = torch.randn(3, 8, 10, 10)
    ref = layer(x)
    out = layer(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", EXACT_IMPLS)
def test_bf16_autocast_cpu(impl):
    torch.manual_seed(0)
    layer = A2D2Conv2d(16, 16, 3, padding=1, num_points=20, head="mlp", impl=impl)
    x = torch.randn(2, 16, 12, 12)
    pts = layer.sample_points(2, (12, 12))
    ref = layer(x, points=pts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, points=pts)
    assert out.dtype == torch.bfloat16
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 2e-2, f"bf16 autocast relative error {rel:.3g}"
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.slow
def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    layer = A2D2Conv2d(4, 8, 3, padding=1, num_points=10, head="mlp", impl="plus")
    x = torch.randn(2, 4, 8, 8)
    pts = layer.sample_points(2, (8, 8))
    compiled = torch.compile(layer)
    torch.testing.assert_close(compiled(x, points=pts), layer(x, points=pts), rtol=1e-5,
                               atol=1e-5)
    layer.eval()
    torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head", ["direct", "mlp"])
def test_state_dict_round_trip(head, tmp_path):
    torch.manual_seed(0)
    src = A2D2Conv2d(4, 6, 3, padding=1, head=head, num_points=5)
    src.set_temperature(7.5)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = A2D2Conv2d(4, 6, 3, padding=1, head=head, num_points=5)
    dst.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    assert float(dst.temperature) == 7.5
    x = torch.randn(2, 4, 8, 8)
    pts = src.sample_points(2, (8, 8))
    torch.testing.assert_close(dst(x, points=pts), src(x, points=pts))
    assert "temperature" in dict(src.named_buffers())


def test_public_tensors_and_init():
    layer = A2D2Conv2d(6, 10, (3, 5), groups=2, num_kernels=3)
    assert layer.weight.shape == (3, 10, 3, 3, 5)
    assert layer.bias.shape == (3, 10)
    assert A2D2Conv2d(6, 10, 3, bias=False).bias is None
    bound = 1 / math.sqrt(3 * 3 * 5)  # nn.Conv2d's kaiming_uniform(a=√5) bound
    assert float(layer.weight.abs().max()) <= bound
    assert float(layer.weight.abs().max()) > 0.9 * bound
    assert not torch.equal(layer.weight[0], layer.weight[1])  # independent kernels
    layer64 = A2D2Conv2d(2, 2, 3, dtype=torch.float64, head="mlp")
    assert all(p.dtype == torch.float64 for p in layer64.parameters())
    layer.reset_parameters()
    text = repr(layer)
    for piece in ("6, 10", "kernel_size=(3, 5)", "groups=2", "K=3", "M=100", "sampling=random",
                  "head=direct", "impl=auto"):
        assert piece in text


def test_temperature_changes_attention():
    torch.manual_seed(0)
    layer = make_layer(num_points=3).eval()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    y1 = layer(x)
    assert a2d2c.set_temperature(layer, 1e6) == 1
    y_uniform = layer(x)
    mean_conv = F.conv2d(x, layer.weight.mean(0), layer.bias.mean(0), padding=1)
    torch.testing.assert_close(y_uniform, mean_conv, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(y1, y_uniform)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,exc,pattern", [
    (dict(num_kernels=0), ValueError, r"num_kernels \(K\) must be >= 1, got 0"),
    (dict(num_points=0), ValueError, r"num_points \(M\) must be >= 1, got 0"),
    (dict(num_draws=-1), ValueError, r"num_draws \(N\) must be >= 1, got -1"),
    (dict(num_kernels=2.0), TypeError, r"num_kernels \(K\) must be an int"),
    (dict(sampling="uniform"), ValueError, r"sampling must be one of .*'random'.*'uniform'"),
    (dict(eval_sampling="random"), ValueError, r"eval_sampling must be one of .*'random'"),
    (dict(head="transformer"), ValueError, r"head must be one of \('direct', 'mlp'\)"),
    (dict(impl="fast"), ValueError,
     r"impl must be one of \('auto', 'kernel', 'unfold', 'plus', 'triton', 'triton_plus'\)"),
    (dict(reduction=0), ValueError, r"reduction \(r\) must be a number in \(0, 1\]"),
    (dict(temperature=0.0), ValueError, r"temperature must be a finite number > 0"),
    (dict(groups=3), ValueError, r"in_channels must be divisible by groups, got in_channels=4"),
    (dict(padding_mode="mirror"), ValueError, r"padding_mode must be one of"),
    (dict(padding="full"), ValueError, r"padding must be an int, a pair, 'same' or 'valid'"),
    (dict(stride=0), ValueError, r"stride must be >= 1"),
])
def test_constructor_errors(kwargs, exc, pattern):
    base = dict(in_channels=4, out_channels=6, kernel_size=3)
    base.update(kwargs)
    with pytest.raises(exc, match=pattern):
        A2D2Conv2d(**base)


def test_out_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match="out_channels must be divisible by groups"):
        A2D2Conv2d(4, 5, 3, groups=2)


def test_forward_errors():
    layer = A2D2Conv2d(4, 6, 3, num_points=5)
    with pytest.raises(ValueError, match=r"expects 4 input channels, got input of shape "
                                         r"\(2, 3, 8, 8\) with 3 channels"):
        layer(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expects a 4-d input .* got a 3-d tensor"):
        layer(torch.randn(4, 8, 8))
    with pytest.raises(ValueError, match=r"input height 2 \(\+ padding 0\) is smaller than the "
                                         r"effective kernel size 3"):
        layer(torch.randn(1, 4, 2, 8))
    x = torch.randn(2, 4, 8, 8)  # output 6x6 = 36 positions
    with pytest.raises(ValueError, match=r"must lie in \[0, 36\); got values in \[0, 36\]"):
        layer(x, points=torch.tensor([[0, 36]]))
    with pytest.raises(ValueError, match=r"got values in \[-1, 3\]"):
        layer(x, points=torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError,
                       match=r"shape \(N, M\) or \(B, N, M\) with B=2, got \(3, 1, 2\)"):
        layer(x, points=torch.zeros(3, 1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(N, M\) or \(B, N, M\)"):
        layer(x, points=torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match=r"points must be an integer tensor"):
        layer(x, points=torch.zeros(1, 2))


def test_explicit_points_shapes():
    torch.manual_seed(0)
    layer = make_layer(num_points=4)
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    shared = torch.tensor([[0, 5, 7], [1, 2, 35]])  # (N=2, M=3), N and M from the points
    expanded = shared.unsqueeze(0).expand(3, -1, -1)
    torch.testing.assert_close(layer(x, points=shared), oracle(layer, x, expanded))


# --------------------------------------------------------------------------- factory
def test_factory_names_select_the_forms():
    k = a2d2c.create_conv2d("a2d2c", 4, 8, 3, padding=1, num_kernels=2)
    p = a2d2c.create_conv2d("a2d2c+", 4, 8, 3, padding=1, num_kernels=2)
    assert isinstance(k, A2D2Conv2d) and k.impl == "auto" and k.num_kernels == 2
    assert isinstance(p, A2D2Conv2d) and p.impl == "plus"
    assert isinstance(a2d2c.create_conv2d("static", 4, 8, 3), nn.Conv2d)
    with pytest.raises(ValueError, match=r"unknown conv type 'a2dc'; did you mean 'a2d2c'"):
        a2d2c.create_conv2d("a2dc", 4, 8, 3)
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['kernal_num'\]"):
        a2d2c.create_conv2d("a2d2c", 4, 8, 3, kernal_num=4)
    with pytest.raises(TypeError, match=r"unexpected argument"):
        a2d2c.create_conv2d("a2d2c+", 4, 8, 3, impl="kernel")  # the name fixes the form


# --------------------------------------------------------------------------- convert
def test_convert_torchvision_resnet_stays_close():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
    originals = {n: m.weight.detach().clone() for n, m in net.named_modules()
                 if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)}
    a2d2c.convert(net, placement="3x3", num_kernels=4)
    layers = {n: m for n, m in net.named_modules() if isinstance(m, A2D2Conv2d)}
    assert set(layers) == set(originals) and len(layers) == 16
    assert isinstance(net.conv1, nn.Conv2d) and not isinstance(net.conv1, A2D2Conv2d)
    for name, layer in layers.items():
        assert not layer.training
        torch.testing.assert_close(layer.weight.mean(0), originals[name], rtol=0, atol=1e-6)
        assert not torch.equal(layer.weight[0], layer.weight[1])
    with torch.no_grad():
        a2d2c.set_temperature(net, 30.0)
        rel30 = ((net(x) - ref).norm() / ref.norm()).item()
        a2d2c.set_temperature(net, 1e9)
        rel_inf = ((net(x) - ref).norm() / ref.norm()).item()
    assert rel30 < 1e-3, rel30
    assert rel_inf < 1e-5, rel_inf


def test_convert_placements():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, groups=8))
    a2d2c.convert(net, placement="every")
    assert all(isinstance(m, A2D2Conv2d) for m in net)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, groups=8))
    a2d2c.convert(net, placement="3x3-dense", num_kernels=2, head="mlp")
    assert [type(m) for m in net] == [A2D2Conv2d, nn.Conv2d, nn.Conv2d]
    assert net[0].num_kernels == 2 and net[0].head == "mlp"
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1))
    a2d2c.convert(net, placement=lambda name, conv: name == "1")
    assert [type(m) for m in net] == [nn.Conv2d, A2D2Conv2d]
    with pytest.raises(ValueError, match=r"unknown placement 'everything'"):
        a2d2c.convert(net, placement="everything")
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['kernal_num'\]"):
        a2d2c.convert(nn.Sequential(nn.Conv2d(3, 8, 3)), kernal_num=4)
