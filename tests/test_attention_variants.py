"""A²D²C attention variants (issue 16): standardised descriptor, learnable logit scale.

Checked against a float64 oracle written from the definitions: the K base responses by
``F.conv2d`` per kernel, ``p̄`` as their mean over all positions (``global`` sampling),
then the variant's transform, softmax over K and ``y = Σ_k π_k ⊙ F_k``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from a2d2c.layers.a2d2c import A2D2Conv2d


def _oracle(layer: A2D2Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = layer.weight.detach().double()
    b = layer.bias.detach().double()
    x = x.double()
    feats = torch.stack([F.conv2d(x, w[k], b[k], layer.stride, layer.padding)
                         for k in range(layer.num_kernels)], 1)  # (B, K, O, H', W')
    bsz, k_, o = feats.shape[:3]
    pi = torch.empty(bsz, k_, o, dtype=torch.float64)
    for i in range(bsz):
        for c in range(o):
            z = [float(feats[i, k, c].mean()) for k in range(k_)]
            if layer.descriptor == "standardized":
                mu = sum(z) / k_
                var = sum((v - mu) ** 2 for v in z) / k_
                z = [(v - mu) / math.sqrt(var + 1e-6) for v in z]
            if layer.log_scale is not None:
                theta = layer.log_scale.detach().double()
                s = math.exp(float(theta if theta.dim() == 0 else theta[c]))
                z = [v * s for v in z]
            tau = float(layer.temperature)
            e = [math.exp(v / tau) for v in z]
            for k in range(k_):
                pi[i, k, c] = e[k] / sum(e)
    y = (feats * pi[:, :, :, None, None]).sum(1)
    return pi, y


@pytest.mark.parametrize("impl", ["kernel", "plus"])
@pytest.mark.parametrize("descriptor,logit_scale", [("standardized", "none"),
                                                    ("raw", "layer"),
                                                    ("raw", "channel"),
                                                    ("standardized", "channel")])
def test_variants_match_oracle(impl: str, descriptor: str, logit_scale: str) -> None:
    torch.manual_seed(0)
    layer = A2D2Conv2d(3, 5, 3, padding=1, sampling="global", impl=impl,
                       descriptor=descriptor, logit_scale=logit_scale).double()
    if layer.log_scale is not None:
        with torch.no_grad():  # away from the init (s = 1) so the scale matters
            layer.log_scale.copy_(torch.linspace(0.5, 2.0, layer.log_scale.numel())
                                  .reshape(layer.log_scale.shape))
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    pi_ref, y_ref = _oracle(layer, x)
    torch.testing.assert_close(layer.attention(x), pi_ref)
    torch.testing.assert_close(layer(x), y_ref)
    layer.eval()  # inference: no autograd node, the op's kernel path
    with torch.no_grad():
        torch.testing.assert_close(layer(x), y_ref)
        torch.testing.assert_close(layer.attention(x), pi_ref)


def test_extra_parameters_and_init() -> None:
    base = A2D2Conv2d(8, 16, 3)
    n0 = sum(p.numel() for p in base.parameters())
    count = {name: sum(p.numel() for p in A2D2Conv2d(8, 16, 3, **kw).parameters()) - n0
             for name, kw in {"std": {"descriptor": "standardized"},
                              "layer": {"logit_scale": "layer"},
                              "channel": {"logit_scale": "channel"}}.items()}
    assert count == {"std": 0, "layer": 1, "channel": 16}
    layer = A2D2Conv2d(8, 16, 3, logit_scale="channel")
    assert torch.equal(layer.log_scale, torch.zeros(16))  # s = 1: the paper's reading
    assert "logit_scale=channel" in repr(layer)


def test_standardized_identical_kernels_is_uniform() -> None:
    """Equal descriptors over K standardise to 0 (ε keeps it finite): uniform π."""
    layer = A2D2Conv2d(2, 3, 1, sampling="global", descriptor="standardized")
    with torch.no_grad():
        layer.weight.copy_(layer.weight[:1].expand_as(layer.weight))
        layer.bias.copy_(layer.bias[:1].expand_as(layer.bias))
    pi = layer.attention(torch.randn(2, 2, 4, 4))
    torch.testing.assert_close(pi, torch.full_like(pi, 0.25))


def test_bad_variant_names() -> None:
    with pytest.raises(ValueError, match="descriptor must be one of"):
        A2D2Conv2d(2, 2, 1, descriptor="zscore")
    with pytest.raises(ValueError, match="logit_scale must be one of"):
        A2D2Conv2d(2, 2, 1, logit_scale="global")


def test_scale_gets_gradient() -> None:
    torch.manual_seed(0)
    layer = A2D2Conv2d(3, 4, 3, padding=1, sampling="global", logit_scale="channel")
    layer(torch.randn(2, 3, 5, 5)).square().sum().backward()
    assert layer.log_scale.grad is not None and layer.log_scale.grad.abs().sum() > 0
