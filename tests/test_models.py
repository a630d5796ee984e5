"""The model zoo: registry, backbones, placements, published counts, timm bridge.

Independent facts checked: torchvision's parameter counts and outputs (static models
load its state_dicts), the published parameter counts of SPEC §3, hand-computed counts
of the placements, and a registry sweep (forward + backward, every parameter gets a
gradient, no NaN).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import a2d2c
from a2d2c.layers.factory import list_conv_layers
from a2d2c.models import ResNet, model_arguments

timm = pytest.importorskip("timm")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- static
@pytest.mark.parametrize("name, ref", [
    ("resnet18", lambda: torchvision.models.resnet18()),
    ("resnet50", lambda: torchvision.models.resnet50()),
    ("mobilenetv2_050", lambda: torchvision.models.mobilenet_v2(width_mult=0.5)),
    ("mobilenetv2_075", lambda: torchvision.models.mobilenet_v2(width_mult=0.75)),
    ("mobilenetv2_100", lambda: torchvision.models.mobilenet_v2()),
])
def test_static_equals_torchvision(name, ref):
    torch.manual_seed(0)
    tv = ref().eval()
    model = a2d2c.create_model(name).eval()
    assert n_params(model) == n_params(tv)
    model.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x), rtol=0, atol=0)


def test_resnet50_v1_moves_the_stride_only():
    v15 = a2d2c.create_model("resnet50")
    v1 = a2d2c.create_model("resnet50", variant="v1")
    assert n_params(v1) == n_params(v15)
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    v1.load_state_dict(v15.state_dict())  # same parameters, different function
    with pytest.raises(ValueError, match="variant"):
        a2d2c.create_model("resnet18", variant="v1")
    with pytest.raises(ValueError, match="variant must be one of"):
        a2d2c.create_model("resnet50", variant="v2")


def test_cifar_stem_and_width():
    m = a2d2c.create_model("resnet18", num_classes=10, in_chans=1, stem="cifar",
                           width_mult=0.25)
    assert isinstance(m.maxpool, nn.Identity)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert m.conv1.in_channels == 1 and m.fc.out_features == 10
    assert [m.layer1[0].conv1.out_channels, m.layer4[0].conv1.out_channels] == [16, 128]
    f = m.forward_features(torch.randn(2, 1, 28, 28))
    assert f.shape == (2, 128, 4, 4)  # 28 → 28, 14, 7, 4: no stem down-sampling
    mb = a2d2c.create_model("mobilenetv2_050", stem="cifar", num_classes=100)
    assert mb.forward_features(torch.randn(1, 3, 32, 32)).shape[-1] == 4


def test_norm_layer_override():
    from torchvision.ops import FrozenBatchNorm2d

    m = a2d2c.create_model("resnet18_a2d2c", norm_layer=FrozenBatchNorm2d)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    assert isinstance(m.layer1[0].bn1, FrozenBatchNorm2d)


# ----------------------------------------------------------------------------- placements
def _convs(model: nn.Module, cls: type) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) is cls]


def test_a2d2c_placements_resnet18():
    tv = 11_689_512
    # SPEC §3 at K=4: initial 11.69M → 11.72M (7×7×3×64 × 3 extra kernels).
    m = a2d2c.create_model("resnet18_a2d2c_plus", placement="initial")
    assert _convs(m, a2d2c.A2D2Conv2d) == ["conv1"]
    assert n_params(m) == tv + 3 * 7 * 7 * 3 * 64
    assert round(n_params(m) / 1e6, 2) == 11.72
    # terminal: a 1×1 512→512 layer (K=4) + its BatchNorm: 11.69M → 12.74M.
    m = a2d2c.create_model("resnet18_a2d2c_plus", placement="terminal")
    assert _convs(m, a2d2c.A2D2Conv2d) == ["terminal.conv"]
    assert n_params(m) == tv + 4 * 512 * 512 + 2 * 512
    assert round(n_params(m) / 1e6, 2) == 12.74
    m = a2d2c.create_model("resnet18_a2d2c", placement="median")
    assert _convs(m, a2d2c.A2D2Conv2d) == ["layer3.0.conv1"]
    assert n_params(m) == tv + 3 * 3 * 3 * 128 * 256
    m = a2d2c.create_model("resnet18_a2d2c", placement="block-initial", num_kernels=8)
    assert _convs(m, a2d2c.A2D2Conv2d) == [f"layer{i}.{j}.conv1" for i in range(1, 5)
                                           for j in range(2)]
    m = a2d2c.create_model("resnet18_a2d2c")  # "all": the 16 3×3 block convs
    names = _convs(m, a2d2c.A2D2Conv2d)
    assert len(names) == 16 and all(".conv" in n and "downsample" not in n for n in names)
    assert m.conv1.__class__ is nn.Conv2d
    m = a2d2c.create_model("resnet18_a2d2c", placement=lambda n: n == "layer2.0.conv2")
    assert _convs(m, a2d2c.A2D2Conv2d) == ["layer2.0.conv2"]


def test_a2d2c_placements_resnet50_and_mobilenetv2():
    m = a2d2c.create_model("resnet50_a2d2c")
    names = _convs(m, a2d2c.A2D2Conv2d)
    assert len(names) == 16 and all(n.endswith("conv2") for n in names)  # the 3×3s
    m = a2d2c.create_model("mobilenetv2_050_a2d2c")
    names = _convs(m, a2d2c.A2D2Conv2d)
    # 17 inverted residuals: 3 convs each except the first (no expansion): 50.
    assert len(names) == 50 and "features.0.0" not in names and "features.18.0" not in names
    m = a2d2c.create_model("mobilenetv2_050_a2d2c", placement="initial")
    assert _convs(m, a2d2c.A2D2Conv2d) == ["features.0.0"]
    with pytest.raises(ValueError, match="ResNet only"):
        a2d2c.create_model("mobilenetv2_050_a2d2c", placement="median")


def test_a2d2c_conv_kwargs_reach_the_layer():
    m = a2d2c.create_model("resnet18_a2d2c", num_kernels=3,
                           conv_kwargs=dict(num_points=7, head="mlp"))
    layer = m.layer1[0].conv1
    assert (layer.num_kernels, layer.num_points, layer.head) == (3, 7, "mlp")
    assert layer.impl == "kernel"
    assert a2d2c.create_model("resnet18_a2d2c_plus").layer1[0].conv1.impl == "plus"
    m = a2d2c.create_model("resnet18", conv="a2d2c", placement="initial")
    assert isinstance(m.conv1, a2d2c.A2D2Conv2d)


# ----------------------------------------------------------------------------- errors
def test_unknown_model_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'resnet18_a2dc2'.*resnet18_a2d2c"):
        a2d2c.create_model("resnet18_a2dc2")


def test_unknown_override_suggests_close_matches():
    with pytest.raises(TypeError, match=r"'num_kernel'.*'num_kernels'"):
        a2d2c.create_model("resnet18_a2d2c", num_kernel=8)
    with pytest.raises(TypeError, match=r"'placment'.*'placement'"):
        a2d2c.create_model("resnet18", placment="all")
    assert "variant" in model_arguments("resnet50")


def test_bad_overrides_are_errors():
    with pytest.raises(ValueError, match=r"unknown placement 'initail'.*'initial'"):
        a2d2c.create_model("resnet18_a2d2c", placement="initail")
    with pytest.raises(ValueError, match="unknown conv type 'odconf'"):
        a2d2c.create_model("resnet18", conv="odconf")
    with pytest.raises(ValueError, match=r"static.*num_kernels"):
        a2d2c.create_model("resnet18", num_kernels=4)
    with pytest.raises(TypeError, match="num_pts"):  # the layer's own check, via the factory
        a2d2c.create_model("resnet18_a2d2c", conv_kwargs=dict(num_pts=10))
    with pytest.raises(ValueError, match="selected no convolution"):
        a2d2c.create_model("resnet18_a2d2c", placement=lambda n: n == "layer9.conv1")
    with pytest.raises(ValueError, match="stem must be one of"):
        a2d2c.create_model("resnet18", stem="cifar10")
    with pytest.raises(ValueError, match="width_mult"):
        a2d2c.create_model("resnet18", width_mult=0)


def test_duplicate_registration_is_an_error():
    def resnet18(**kwargs):
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="already registered"):
        a2d2c.register_model(resnet18)


def test_list_models_pattern():
    assert a2d2c.list_models("resnet18_a2d2c*") == ["resnet18_a2d2c", "resnet18_a2d2c_plus"]
    names = a2d2c.list_models()
    for base in ("resnet18", "resnet50", "mobilenetv2_050", "mobilenetv2_075", "mobilenetv2_100"):
        for suffix in ("", "_a2d2c", "_a2d2c_plus", "_condconv", "_dynamicconv", "_dcd",
                       "_odconv", "_odconv_1x"):
            assert base + suffix in names


# ----------------------------------------------------------------------------- timm, features
def test_timm_create_model_uses_the_registry():
    m = timm.create_model("resnet18_a2d2c", num_classes=10, stem="cifar", width_mult=0.25)
    assert isinstance(m, ResNet) and m.fc.out_features == 10
    assert isinstance(m.layer1[0].conv1, a2d2c.A2D2Conv2d)
    # timm's own resnet18 is left alone; ours is a2d2c_resnet18.
    assert not isinstance(timm.create_model("resnet18"), ResNet)
    assert isinstance(timm.create_model("a2d2c_resnet18"), ResNet)
    assert a2d2c.models.timm_name("resnet18") == "a2d2c_resnet18"
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("resnet18_a2d2c", pretrained=True)


@pytest.mark.parametrize("name, stem, size, reductions", [
    ("resnet18_a2d2c", "imagenet", 64, [2, 4, 8, 16, 32]),
    ("resnet18_a2d2c", "cifar", 32, [1, 1, 2, 4, 8]),
    ("mobilenetv2_050_a2d2c_plus", "imagenet", 64, [2, 4, 8, 16, 32]),
])
def test_features_only(name, stem, size, reductions):
    m = timm.create_model(name, features_only=True, stem=stem, width_mult=0.25)
    feats = m(torch.randn(1, 3, size, size))
    assert [size // f.shape[-1] for f in feats] == reductions
    assert [f.shape[1] for f in feats] == m.feature_info.channels()
    m = timm.create_model(name, features_only=True, out_indices=(1, 2, 3, 4), width_mult=0.25)
    assert len(m(torch.randn(1, 3, 64, 64))) == 4


def test_torchvision_fpn_takes_the_plain_resnet():
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    body = a2d2c.create_model("resnet18_a2d2c", width_mult=0.25)
    chans = [f["num_chs"] for f in body.feature_info[1:]]
    fpn = BackboneWithFPN(body, {f"layer{i}": str(i - 1) for i in range(1, 5)}, chans, 32)
    out = fpn(torch.randn(1, 3, 64, 64))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert out["0"].shape == (1, 32, 16, 16)


# ----------------------------------------------------------------------------- sweep
def _small(name: str) -> nn.Module:
    return a2d2c.create_model(name, num_classes=7, width_mult=0.25, stem="cifar")


@pytest.mark.parametrize("name", a2d2c.list_models())
def test_registry_sweep_forward_backward(name):
    conv = a2d2c.models.get_model_entrypoint(name)  # every name builds, trains one step
    del conv
    torch.manual_seed(0)
    try:
        model = _small(name)
    except ValueError as exc:  # a baseline conv type not in this checkout's factory
        if "unknown conv type" in str(exc):
            pytest.skip(f"{exc} (have {list_conv_layers()})")
        raise
    model.train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    with_grad = sum(p.numel() for p in model.parameters() if p.grad is not None)
    assert with_grad == n_params(model)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
