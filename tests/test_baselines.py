"""The baseline layers (CondConv, DynamicConv, DCD, ODConv) against independent facts.

Each layer is checked against a slow per-sample oracle written here from its paper's
formula (plain ``F.conv2d`` per sample with the kernel the formula defines), against
``nn.Conv2d`` where the math degenerates to it, and against closed-form parameter counts.
The oracles share nothing with the layers but their parameters.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import a2d2c
from a2d2c import CondConv2d, DCDConv2d, DCDLinear, DynamicConv2d, ODConv2d
from a2d2c.layers.dcd import dcd_latent_dim

LAYERS = {"condconv": CondConv2d, "dynamicconv": DynamicConv2d, "dcd": DCDConv2d,
          "odconv": ODConv2d}


# --------------------------------------------------------------------------- oracles
def _pad(layer, x):
    """Explicit padding for non-zero padding modes; returns (x, padding left for conv)."""
    ph, pw = layer.padding
    if layer.padding_mode != "zeros":
        return F.pad(x, (pw, pw, ph, ph), mode=layer.padding_mode), (0, 0)
    return x, (ph, pw)


def _sigmoid(z):
    return 1.0 / (1.0 + torch.exp(-z))


def _softmax(z):
    e = torch.exp(z - z.max())
    return e / e.sum()


def _fc(linear, v):
    out = linear.weight @ v
    return out if linear.bias is None else out + linear.bias


def oracle_condconv(layer, x):
    """Yang et al. 2019: r = sigmoid(W_r GAP(x) + b_r), W(x) = Σ_k r_k W_k."""
    xp, pad = _pad(layer, x)
    out = []
    for b in range(x.shape[0]):
        r = _sigmoid(_fc(layer.routing, x[b].mean((1, 2))))
        kernel = sum(r[k] * layer.weight[k] for k in range(layer.num_kernels))
        bias = None if layer.bias is None else sum(r[k] * layer.bias[k]
                                                   for k in range(layer.num_kernels))
        out.append(F.conv2d(xp[b:b + 1], kernel, bias, layer.stride, pad, layer.dilation,
                            layer.groups))
    return torch.cat(out)


def oracle_dynamicconv(layer, x):
    """Chen et al. 2020: π = softmax(FC2(ReLU(FC1(GAP(x)))) / τ), W(x) = Σ_k π_k W_k."""
    xp, pad = _pad(layer, x)
    tau = float(layer.temperature)
    out = []
    for b in range(x.shape[0]):
        hidden = torch.clamp(_fc(layer.fc1, x[b].mean((1, 2))), min=0)
        pi = _softmax(_fc(layer.fc2, hidden) / tau)
        kernel = sum(pi[k] * layer.weight[k] for k in range(layer.num_kernels))
        bias = None if layer.bias is None else sum(pi[k] * layer.bias[k]
                                                   for k in range(layer.num_kernels))
        out.append(F.conv2d(xp[b:b + 1], kernel, bias, layer.stride, pad, layer.dilation,
                            layer.groups))
    return torch.cat(out)


def oracle_odconv(layer, x):
    """Li et al. 2022, Eq. 2: W(x) = Σ_k α_wk · α_f ⊙ α_c ⊙ α_s ⊙ W_k, one kernel per sample."""
    xp, pad = _pad(layer, x)
    tau = float(layer.temperature)
    k_n, o_n, cg, kh, kw = layer.weight.shape
    og = o_n // layer.groups
    out = []
    for b in range(x.shape[0]):
        s = torch.clamp(_fc(layer.fc, x[b].mean((1, 2))), min=0)
        a_c = _sigmoid(_fc(layer.channel_fc, s) / tau)
        a_f = (torch.ones(o_n, dtype=x.dtype) if layer.filter_fc is None
               else _sigmoid(_fc(layer.filter_fc, s) / tau))
        a_s = (torch.ones(kh * kw, dtype=x.dtype) if layer.spatial_fc is None
               else _sigmoid(_fc(layer.spatial_fc, s) / tau)).view(kh, kw)
        a_w = (torch.ones(1, dtype=x.dtype) if layer.kernel_fc is None
               else _softmax(_fc(layer.kernel_fc, s) / tau))
        kernel = torch.zeros(o_n, cg, kh, kw, dtype=x.dtype)
        bias = None if layer.bias is None else torch.zeros(o_n, dtype=x.dtype)
        for o in range(o_n):
            grp = o // og
            a_c_o = a_c[grp * cg:(grp + 1) * cg]  # the input channels filter o sees
            for k in range(k_n):
                kernel[o] += a_w[k] * a_f[o] * a_c_o[:, None, None] * a_s * layer.weight[k, o]
                if bias is not None:
                    bias[o] += a_w[k] * a_f[o] * layer.bias[k, o]
        out.append(F.conv2d(xp[b:b + 1], kernel, bias, layer.stride, pad, layer.dilation,
                            layer.groups))
    return torch.cat(out)


def _hsig(z):
    return torch.clamp(z + 3, 0, 6) / 3


def _dcd_attention(layer, x_b):
    """Λ (O,) and Φ̃ (L, L) of one sample, from the authors' attention written out."""
    n_lat = layer.latent_dim
    pooled = F.adaptive_avg_pool2d(x_b, layer.pool_size).flatten()
    s = layer.fc.weight @ pooled
    s = s * _hsig(layer.fc_se.weight @ s)
    return _hsig(layer.fc_scale.weight @ s), (layer.fc_phi.weight @ s).view(n_lat, n_lat)


def _latent_norm(z, norm):
    """DCD's latent norms by hand on z (B, L, ...): BatchNorm with batch statistics (biased
    variance) in training and running ones in eval; GroupNorm(1, L) with each sample's own
    statistics over all its latent values."""
    if norm is None:
        return z
    shape = [1, -1] + [1] * (z.dim() - 2)
    if isinstance(norm, nn.GroupNorm):
        dims = tuple(range(1, z.dim()))
        mean, var = z.mean(dims, keepdim=True), z.var(dims, unbiased=False, keepdim=True)
    elif norm.training:
        dims = (0, *range(2, z.dim()))
        mean, var = z.mean(dims, keepdim=True), z.var(dims, unbiased=False, keepdim=True)
    else:
        mean, var = norm.running_mean.view(shape), norm.running_var.view(shape)
    return (z - mean) / torch.sqrt(var + norm.eps) * norm.weight.view(shape) + norm.bias.view(shape)


def oracle_dcd(layer, x):
    """Li et al. 2021 as the authors' code computes it: y = Λ ⊙ conv(x, W0) + P u with
    z = N₁(Qᵀ x_c), u = N₂(Φ̃ z) + z, x_c the input under the kernel's centre tap (read
    from an unfold), the latent norms written out (BatchNorm: batch statistics in training;
    GroupNorm(1, L): per sample)."""
    xp, pad = _pad(layer, x)
    _o_n, c_n, kh, kw = layer.weight.shape
    static, phis = [], []
    for b in range(x.shape[0]):
        lam, phi = _dcd_attention(layer, x[b:b + 1])
        bias = None if layer.bias is None else lam * layer.bias  # the static filter's bias
        static.append(F.conv2d(xp[b:b + 1], lam[:, None, None, None] * layer.weight, bias,
                               layer.stride, pad, layer.dilation))
        phis.append(phi)
    static = torch.cat(static)
    ho, wo = static.shape[2:]
    cols = F.unfold(xp, (kh, kw), layer.dilation, pad, layer.stride)
    x_c = cols.view(x.shape[0], c_n, kh, kw, ho * wo)[:, :, (kh - 1) // 2, (kw - 1) // 2]
    z = _latent_norm(torch.einsum("lc,bcp->blp", layer.q, x_c), layer.norm_q)
    u = _latent_norm(torch.einsum("bkl,blp->bkp", torch.stack(phis), z), layer.norm_phi)
    return static + torch.einsum("ol,blp->bop", layer.p, u + z).view_as(static)


def oracle_dcd_kernel(layer, x):
    """BatchNorm in eval mode (or no latent norms): W(x) = Λ W0 + P Φ Qᵀ at the centre tap,
    Φ = I + Φ̃, with each BatchNorm folded into a per-channel scale a and shift c, which
    adds the per-sample bias P((diag(a₂)Φ̃ + I) c₁ + c₂): one conv per sample."""
    assert layer.latent_norm == "none" or (layer.latent_norm == "batch" and not layer.training)
    xp, pad = _pad(layer, x)
    _o_n, _c_n, kh, kw = layer.weight.shape
    n_lat = layer.latent_dim
    eye = torch.eye(n_lat, dtype=x.dtype)

    def fold(bn):
        if bn is None:
            return torch.ones(n_lat, dtype=x.dtype), torch.zeros(n_lat, dtype=x.dtype)
        a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return a, bn.bias - a * bn.running_mean

    (a1, c1), (a2, c2) = fold(layer.norm_q), fold(layer.norm_phi)
    out = []
    for b in range(x.shape[0]):
        lam, phi = _dcd_attention(layer, x[b:b + 1])
        fusion = a2[:, None] * phi + eye
        kernel = lam[:, None, None, None] * layer.weight
        kernel[:, :, (kh - 1) // 2, (kw - 1) // 2] += layer.p @ fusion @ (a1[:, None] * layer.q)
        bias = layer.p @ (fusion @ c1 + c2)
        if layer.bias is not None:
            bias = bias + lam * layer.bias
        out.append(F.conv2d(xp[b:b + 1], kernel, bias, layer.stride, pad, layer.dilation))
    return torch.cat(out)


ORACLES = {"condconv": oracle_condconv, "dynamicconv": oracle_dynamicconv,
           "dcd": oracle_dcd, "odconv": oracle_odconv}


def make(name, dtype=torch.float64, **kw):
    args = dict(in_channels=4, out_channels=6, kernel_size=3, padding=1)
    args.update(kw)
    if name != "dcd":
        args.setdefault("num_kernels", 3)
    torch.manual_seed(0)
    layer = LAYERS[name](**args, dtype=dtype)
    with torch.no_grad():  # spread the attention logits so that it is far from uniform
        for mod in layer.modules():
            if isinstance(mod, nn.Linear):
                mod.weight.mul_(3.0)
                if mod.bias is not None:
                    mod.bias.normal_()
            if isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                mod.weight.normal_(1.0, 0.3)  # nothing left at identity
                mod.bias.normal_()
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
    return layer


GEOMETRIES = [
    dict(),
    dict(stride=2, bias=False),
    dict(in_channels=6, out_channels=4, kernel_size=(3, 5), padding=(0, 2), dilation=(2, 1)),
    dict(kernel_size=1, padding=0, stride=2),
    dict(padding=2),
    dict(padding_mode="reflect", stride=(1, 2)),
    dict(in_channels=6, out_channels=4, groups=2),
    dict(in_channels=6, out_channels=6, groups=6),  # depthwise: ODConv has no filter head
]


def _cases():
    for name in LAYERS:
        for i, geo in enumerate(GEOMETRIES):
            if name == "dcd" and geo.get("groups", 1) != 1:
                continue
            yield pytest.param(name, geo, id=f"{name}-{i}")
    yield pytest.param("odconv", dict(num_kernels=1), id="odconv-K1")
    yield pytest.param("dcd", dict(pool_size=2, latent_dim="sqrt"), id="dcd-pool2")
    for norm in ("batch", "none"):  # the default is "layer"
        yield pytest.param("dcd", dict(latent_norm=norm), id=f"dcd-{norm}")
        yield pytest.param("dcd", dict(latent_norm=norm, stride=2, padding_mode="reflect"),
                           id=f"dcd-{norm}-reflect")
    yield pytest.param("dynamicconv", dict(temperature=7.0), id="dynamicconv-tau")
    yield pytest.param("odconv", dict(temperature=3.0), id="odconv-tau")


@pytest.mark.parametrize("name,geo", list(_cases()))
def test_matches_per_sample_oracle_float64(name, geo):
    layer = make(name, **geo)
    x = torch.randn(3, layer.in_channels, 9, 8, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    ref = ORACLES[name](layer, x)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    params = [p for p in layer.parameters()]
    grads = torch.autograd.grad(y, [x, *params], g)
    grads_ref = torch.autograd.grad(ref, [x, *params], g)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def _impl_cases():
    for name in ("condconv", "dynamicconv", "odconv"):
        for impl in ("kernel", "unfold", "plus"):
            for i in (0, 2, 3, 6):  # plain, (3, 5) dilated, 1x1 strided, grouped
                # ODConv's plus form: exact at every kernel size (its spatial attention is a
                # factored per-tap scale of the input columns)
                yield pytest.param(name, impl, GEOMETRIES[i], id=f"{name}-{impl}-{i}")


@pytest.mark.parametrize("name,impl,geo", list(_impl_cases()))
def test_every_exact_impl_matches_oracle(name, impl, geo):
    layer = make(name, impl=impl, **geo)
    x = torch.randn(3, layer.in_channels, 7, 8, dtype=torch.float64, requires_grad=True)
    y, ref = layer(x), ORACLES[name](layer, x)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    params = [x, *layer.parameters()]
    for got, want in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(ref, params, g),
                         strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_odconv_fused_plus_needs_1x1_kernels_but_plus_does_not():
    with pytest.raises(ValueError, match="only with 1x1 kernels"):
        ODConv2d(4, 4, 3, impl="triton_plus")
    assert ODConv2d(4, 4, 3, impl="plus").impl == "plus"


@pytest.mark.parametrize("name", list(LAYERS))
def test_float32_matches_oracle(name):
    layer = make(name, dtype=torch.float32, stride=2)
    x = torch.randn(4, 4, 11, 11)
    torch.testing.assert_close(layer(x), ORACLES[name](layer, x), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- degenerate cases
def _static_like(layer, weight, bias):
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                     layer.padding, layer.dilation, layer.groups, bias is not None,
                     layer.padding_mode, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def test_dynamicconv_k1_is_conv2d():
    # softmax over one kernel is 1, whatever the attention computes
    layer = make("dynamicconv", num_kernels=1, stride=2, padding_mode="circular")
    conv = _static_like(layer, layer.weight[0], layer.bias[0])
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-12, atol=1e-12)


def test_dynamicconv_infinite_temperature_is_mean_kernel():
    # τ → ∞: uniform attention, the conv with the mean kernel
    layer = make("dynamicconv", num_kernels=4)
    layer.set_temperature(1e12)
    conv = _static_like(layer, layer.weight.mean(0), layer.bias.mean(0))
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-9, atol=1e-9)


def test_condconv_constant_routing_is_scaled_conv2d():
    # zero routing weights and biases: every r_k = sigmoid(0) = 1/2
    layer = make("condconv", num_kernels=3, groups=2, in_channels=4, out_channels=6)
    with torch.no_grad():
        layer.routing.weight.zero_()
        layer.routing.bias.zero_()
    conv = _static_like(layer, 0.5 * layer.weight.sum(0), 0.5 * layer.bias.sum(0))
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-12, atol=1e-12)


def test_odconv_k1_with_saturated_attentions_is_conv2d():
    # K = 1 has no kernel head; channel/filter/spatial attentions saturated at exactly 1
    layer = make("odconv", num_kernels=1, stride=2, dilation=2, padding=2)
    assert layer.kernel_fc is None
    with torch.no_grad():
        for fc in (layer.channel_fc, layer.filter_fc, layer.spatial_fc):
            fc.weight.zero_()
            fc.bias.fill_(50.0)  # sigmoid(50) == 1.0 in float64
    conv = _static_like(layer, layer.weight[0], layer.bias[0])
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("geo", [dict(), dict(stride=2, bias=False), GEOMETRIES[2],
                                 dict(padding_mode="reflect", pool_size=2)])
def test_dcd_eval_and_unnormalised_are_per_sample_kernels(geo):
    # the authors' BatchNorms in eval mode (folded) and latent_norm="none": W(x) is a
    # per-sample kernel with (for BatchNorm) a per-sample bias
    for layer in (make("dcd", latent_norm="batch", **geo).eval(),
                  make("dcd", latent_norm="none", **geo)):
        x = torch.randn(3, layer.in_channels, 9, 8, dtype=torch.float64)
        torch.testing.assert_close(layer(x), oracle_dcd_kernel(layer, x), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(layer(x), oracle_dcd(layer, x), rtol=1e-10, atol=1e-10)


def test_dcd_default_latent_norm_is_per_sample():
    # GroupNorm(1, L): a sample's output does not depend on its batch, in training too, and
    # batch size 1 with a 1x1 output trains
    layer = make("dcd")
    assert layer.latent_norm == "layer" and isinstance(layer.norm_q, nn.GroupNorm)
    x = torch.randn(4, 4, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x[:1]), layer(x)[:1], rtol=1e-12, atol=1e-12)
    layer(torch.randn(1, 4, 1, 1, dtype=torch.float64)).sum().backward()


def test_dcd_training_uses_batch_statistics():
    # the authors' BatchNorms: a sample's output depends on the rest of the batch in training,
    # not in eval; the running statistics move towards the latent batch statistics
    layer = make("dcd", latent_norm="batch")
    x = torch.randn(4, 4, 7, 7, dtype=torch.float64)
    before = layer.norm_q.running_mean.clone()
    y_all = layer(x)
    assert not torch.allclose(layer(x[:2])[0], y_all[0])
    assert not torch.equal(layer.norm_q.running_mean, before)
    layer.eval()
    torch.testing.assert_close(layer(x[:2])[0], layer(x)[0], rtol=1e-12, atol=1e-12)


def test_dcd_without_residual_and_unit_scale_is_conv2d():
    # Λ = hsig(0) = 1 and P = 0: W(x) = W0
    layer = make("dcd", stride=2)
    with torch.no_grad():
        layer.fc_scale.weight.zero_()
        layer.p.zero_()
    conv = _static_like(layer, layer.weight, layer.bias)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- training, state
@pytest.mark.parametrize("name", list(LAYERS))
def test_batch_size_one_training(name):
    layer = make(name, dtype=torch.float32).train()
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    y = layer(x)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} gets no gradient"
    # 1×1 spatial input: nothing normalises over positions either (DCD's optional
    # BatchNorms, the authors', would have one value per channel and say so)
    layer(torch.randn(1, 4, 1, 1)).sum().backward()
    if name == "dcd":
        with pytest.raises(ValueError, match="one latent value per channel"):
            make(name, dtype=torch.float32, latent_norm="batch").train()(torch.randn(1, 4, 1, 1))


@pytest.mark.parametrize("name", list(LAYERS))
def test_state_dict_round_trip(name):
    layer = make(name)
    if isinstance(layer, a2d2c.TemperatureMixin):
        layer.set_temperature(4.0)
    torch.manual_seed(123)
    fresh = LAYERS[name](4, 6, 3, padding=1, dtype=torch.float64,
                         **({} if name == "dcd" else {"num_kernels": 3}))
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    assert not torch.allclose(fresh(x), layer(x))
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)
    if isinstance(layer, a2d2c.TemperatureMixin):
        assert "temperature" in layer.state_dict() and float(fresh.temperature) == 4.0


def test_set_temperature_reaches_softmax_layers_only():
    model = nn.Sequential(*(a2d2c.create_conv2d(n, 4, 4, 3, padding=1) for n in LAYERS))
    assert a2d2c.set_temperature(model, 30.0) == 2  # DynamicConv and ODConv
    taus = {type(m).__name__: float(m.temperature) for m in model
            if isinstance(m, a2d2c.TemperatureMixin)}
    assert taus == {"DynamicConv2d": 30.0, "ODConv2d": 30.0}
    assert not any(isinstance(m, a2d2c.TemperatureMixin) for m in model
                   if isinstance(m, (CondConv2d, DCDConv2d)))


@pytest.mark.parametrize("name", ["dynamicconv", "odconv"])
def test_temperature_changes_the_output(name):
    layer = make(name)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    y1 = layer(x)
    a2d2c.set_temperature(layer, 30.0)
    assert not torch.allclose(layer(x), y1)


class _CountConvs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.mkldnn_convolution,
                                   torch.ops.aten._convolution):
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", list(LAYERS))
def test_no_loop_over_the_batch(name):
    layer = make(name, dtype=torch.float32)
    counts = []
    for batch in (1, 7):
        with _CountConvs() as counter:
            layer(torch.randn(batch, 4, 6, 6))
        counts.append(counter.calls)
    assert counts[0] == counts[1] <= 3, counts


@pytest.mark.parametrize("name", list(LAYERS))
def test_bf16_autocast(name):
    layer = make(name, dtype=torch.float32)
    x = torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(x), rtol=5e-2, atol=5e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(LAYERS))
def test_cuda_matches_oracle(name):
    layer = make(name, dtype=torch.float64, stride=2)
    x = torch.randn(3, 4, 9, 9, dtype=torch.float64)
    ref = ORACLES[name](layer, x)
    torch.testing.assert_close(layer.cuda()(x.cuda()).cpu(), ref, rtol=1e-8, atol=1e-8)


# --------------------------------------------------------------------------- factory, errors
def test_factory_builds_each_layer():
    for name, cls in LAYERS.items():
        layer = a2d2c.create_conv2d(name, 8, 16, 3, stride=2, padding=1, bias=False)
        assert type(layer) is cls
        assert layer.stride == (2, 2) and layer.bias is None
        assert f"{layer.in_channels}, {layer.out_channels}" in repr(layer)
    assert "K=8" in repr(a2d2c.create_conv2d("condconv", 8, 16, 3, num_kernels=8))
    assert "L=" in repr(a2d2c.create_conv2d("dcd", 8, 16, 3))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: CondConv2d(4, 6, 3, num_kernels=0), ValueError, r"num_kernels \(K\) must be >= 1"),
    (lambda: DynamicConv2d(4, 6, 3, reduction=0.0), ValueError, r"reduction must be .* \(0, 1\]"),
    (lambda: DynamicConv2d(4, 6, 3, temperature=0.0), ValueError, "temperature must be"),
    (lambda: ODConv2d(4, 6, 3, min_hidden=0), ValueError, r"min_hidden must be >= 1"),
    (lambda: ODConv2d(4, 6, 3, groups=4), ValueError, "out_channels must be divisible by groups"),
    (lambda: DCDConv2d(4, 6, 3, groups=2), ValueError, "groups=1 only"),
    (lambda: DCDConv2d(4, 6, 3, num_kernels=4), ValueError, r"num_kernels \(K\) must be 1"),
    (lambda: DCDConv2d(4, 6, 3, latent_dim="half"), ValueError, "latent_dim must be"),
    (lambda: DCDConv2d(4, 6, 3, latent_dim=0), ValueError, r"latent_dim \(L\) must be >= 1"),
    (lambda: DCDConv2d(4, 6, 3, pool_size=True), TypeError, "pool_size must be an int"),
    (lambda: a2d2c.create_conv2d("odconv", 4, 6, 3, kernal_num=4), TypeError,
     r"unexpected argument\(s\) \['kernal_num'\]"),
    (lambda: a2d2c.create_conv2d("dynamicconv", 4, 6, 3, num_points=4), TypeError,
     "num_points"),
    (lambda: a2d2c.create_conv2d("odconvv", 4, 6, 3), ValueError, "did you mean 'odconv'"),
])
def test_construction_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("name", list(LAYERS))
def test_input_errors(name):
    layer = a2d2c.create_conv2d(name, 4, 6, 3)
    with pytest.raises(ValueError, match="expects 4 input channels"):
        layer(torch.randn(2, 5, 8, 8))
    with pytest.raises(ValueError, match="expects a 4-d input"):
        layer(torch.randn(4, 8, 8))
    with pytest.raises(ValueError, match="smaller than the effective kernel size"):
        layer(torch.randn(1, 4, 2, 8))


# --------------------------------------------------------------------------- parameter counts
def _count(layer):
    return sum(p.numel() for p in layer.parameters())


def test_parameter_counts_closed_form():
    c, o, k, kh, kw, g = 24, 40, 4, 3, 5, 2
    # CondConv: K experts (+ K biases) and a C→K routing FC with bias
    assert _count(CondConv2d(c, o, (kh, kw), groups=g, num_kernels=k)) == (
        k * o * (c // g) * kh * kw + k * o + c * k + k)
    # DynamicConv: K kernels, FC C→h (+h), FC h→K (+K), h = int(C/4) = 6
    assert _count(DynamicConv2d(c, o, (kh, kw), groups=g, num_kernels=k, bias=False)) == (
        k * o * (c // g) * kh * kw + (c * 6 + 6) + (6 * k + k))
    # ODConv: h = max(int(C/16), 16) = 16; four heads (channel C, filter O, spatial kh·kw, K)
    h = 16
    assert _count(ODConv2d(c, o, (kh, kw), groups=g, num_kernels=k, bias=False)) == (
        k * o * (c // g) * kh * kw + (c * h + h) + (h * c + c) + (h * o + o)
        + (h * kh * kw + kh * kw) + (h * k + k))
    # ODConv 1x on a depthwise 3×3 (no kernel head, no filter head), 1×1 (no spatial head)
    h = max(int(512 * 0.0625), 16)  # 32
    assert _count(ODConv2d(512, 512, 3, groups=512, num_kernels=1, bias=False)) == (
        512 * 9 + (512 * h + h) + (h * 512 + 512) + (h * 9 + 9))
    assert _count(ODConv2d(64, 128, 1, num_kernels=4, bias=False)) == (
        4 * 128 * 64 + (64 * 16 + 16) + (16 * 64 + 64) + (16 * 128 + 128) + (16 * 4 + 4))
    # DCD, paper rule: C = 64 → L = 64 / 2^⌊log2 8⌋ = 8, h = max(⌊max(64, 64)/16⌋, 4) = 4
    lat, h = 8, 4
    assert _count(DCDConv2d(64, 96, 3, bias=True)) == (
        96 * 64 * 9 + 96 + lat * 64 + 96 * lat + 4 * lat + 64 * h + h * h + h * lat * lat + h * 96)
    assert _count(DCDConv2d(64, 96, 3, bias=True, latent_norm="none")) == (
        96 * 64 * 9 + 96 + lat * 64 + 96 * lat + 64 * h + h * h + h * lat * lat + h * 96)
    # DCD as the authors' ResNet-18: pool 2×2, L = ⌊√(4·128)⌋ = 22, h = ⌊max(512, 484)/16⌋ = 32
    lat, h = 22, 32
    assert _count(DCDConv2d(128, 128, 3, bias=False, pool_size=2, latent_dim="sqrt")) == (
        128 * 128 * 9 + lat * 128 + 128 * lat + 4 * lat + 4 * 128 * h + h * h + h * lat * lat
        + h * 128)


def test_dcd_latent_dimension_rules():
    # the paper's L = ⌊C / 2^⌊log2 √C⌋⌋
    assert [dcd_latent_dim(c) for c in (64, 128, 256, 512, 1024)] == [8, 16, 16, 32, 32]
    # the authors' ResNet code: ⌊√(p²C)⌋
    assert [dcd_latent_dim(c, "sqrt", 2) for c in (64, 128, 256, 512)] == [16, 22, 32, 45]
    assert dcd_latent_dim(256, "sqrt", 1) == 16 and dcd_latent_dim(100, 7) == 7
    assert math.isqrt(4 * 512) == 45


# --------------------------------------------------------------------------- DCD classifier
@pytest.mark.parametrize("norm,train", [("layer", True), ("batch", True), ("batch", False),
                                       ("none", True)])
def test_dcd_linear_matches_formula_and_counts(norm, train):
    torch.manual_seed(0)
    c, o, lat, h = 12, 7, 5, 6
    layer = DCDLinear(c, o, latent_dim=lat, hidden=h, latent_norm=norm,
                      dtype=torch.float64).train(train)
    with torch.no_grad():
        for fc in (layer.fc, layer.fc_se, layer.fc_phi, layer.fc_scale):
            fc.weight.mul_(3.0)
        for nrm in (layer.norm_q, layer.norm_phi):
            if nrm is None:
                continue
            nrm.weight.normal_(1.0, 0.3)
            nrm.bias.normal_()
            if norm == "batch":
                nrm.running_mean.normal_()
                nrm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, c, dtype=torch.float64, requires_grad=True)
    # y = Λ ⊙ (W0 x + b) + P u, z = N₁(Qᵀ x), u = N₂(Φ̃ z) + z (the authors' DYCls)
    lams, phis = [], []
    for b in range(3):
        s = layer.fc.weight @ x[b]
        s = s * _hsig(layer.fc_se.weight @ s)
        phis.append((layer.fc_phi.weight @ s).view(lat, lat))
        lams.append(_hsig(layer.fc_scale.weight @ s))
    lam, phi = torch.stack(lams), torch.stack(phis)
    z = _latent_norm(x @ layer.q.T, layer.norm_q)
    u = _latent_norm(torch.einsum("bkl,bl->bk", phi, z), layer.norm_phi) + z
    ref = lam * (x @ layer.weight.T + layer.bias) + u @ layer.p.T
    y = layer(x)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    params = list(layer.parameters())
    g = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, [x, *params], g),
                         torch.autograd.grad(ref, [x, *params], g), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    if train and norm == "batch":  # batch size 1: the BatchNorms have one value per channel
        with pytest.raises(ValueError, match="batch of 2 or more"):
            layer(torch.randn(1, c, dtype=torch.float64))
    else:
        layer(torch.randn(1, c, dtype=torch.float64)).sum().backward()
    # the authors' ResNet-18 classifier: 512 → 1000, L = h = 32
    assert _count(DCDLinear(512, 1000)) == (
        512 * 1000 + 1000 + 32 * 512 + 1000 * 32 + 4 * 32 + 512 * 32 + 32 * 32 + 32 * 32 * 32
        + 32 * 1000)
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 512\)"):
        DCDLinear(512, 10)(torch.randn(2, 256))


@pytest.mark.parametrize("layer_cls", [CondConv2d, DynamicConv2d, ODConv2d])
@pytest.mark.parametrize("shape,training", [((64, 32, 4, 4), True), ((2, 8, 16, 16), True),
                                            ((1, 32, 7, 7), False), ((4, 8, 9, 9), False)])
def test_resolve_impl_names_the_path_the_op_runs(monkeypatch, layer_cls, shape, training):
    """``resolve_impl`` (what a2d2c.profiling and the bench report) is the op's own choice
    for the layer's call — ODConv's factored spatial attention included — and an explicit
    ``impl`` is returned as is."""
    from a2d2c.ops import mixed_conv

    ran = []
    real = mixed_conv.auto_impl
    monkeypatch.setattr(mixed_conv, "auto_impl",
                        lambda *a, **k: ran.append(real(*a, **k)) or ran[-1])
    layer = layer_cls(shape[1], 16, 3, padding=1, num_kernels=4).train(training)
    x = torch.randn(*shape, requires_grad=training)
    with torch.set_grad_enabled(training):
        layer(x)
    assert ran == [layer.resolve_impl(shape, training=training)]
    layer.impl = "unfold"
    assert layer.resolve_impl(shape) == "unfold"
