"""The model zoo: registry, backbones, placements, published counts, timm bridge.

Independent facts checked: torchvision's parameter counts and outputs (static models
load its state_dicts), the published parameter counts of SPEC §3, hand-computed counts
of the placements, and a registry sweep (forward + backward, every parameter gets a
gradient, no NaN).
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

import a2d2c
from a2d2c.models import ResNet, model_arguments

try:
    import timm
except ImportError:  # timm is an optional extra; only the timm tests need it
    timm = None
needs_timm = pytest.mark.skipif(timm is None, reason="timm is not installed")



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These models are tiny (or run once): intra-op threads only add OpenMP spin-waiting,
    # which on a loaded 2-core machine costs more than the work itself.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_meta(name: str, **overrides) -> nn.Module:
    """Build without allocating or initialising weights: for counting parameters."""
    with torch.device("meta"):
        return a2d2c.create_model(name, **overrides)


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
    v15 = a2d2c.create_model("resnet50", width_mult=0.25)
    v1 = a2d2c.create_model("resnet50", variant="v1", width_mult=0.25)
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
    mb = a2d2c.create_model("mobilenetv2_050", stem="cifar", num_classes=100, width_mult=0.25)
    assert mb.forward_features(torch.randn(1, 3, 32, 32)).shape[-1] == 4


def test_norm_layer_override():
    from torchvision.ops import FrozenBatchNorm2d

    m = build_meta("resnet18_a2d2c", norm_layer=FrozenBatchNorm2d)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    assert isinstance(m.layer1[0].bn1, FrozenBatchNorm2d)


# ----------------------------------------------------------------------------- placements
def _convs(model: nn.Module, cls: type) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) is cls]


def test_a2d2c_placements_resnet18():
    tv = 11_689_512
    # SPEC §3 at K=4: initial 11.69M → 11.72M (7×7×3×64 × 3 extra kernels).
    m = build_meta("resnet18_a2d2c_plus", placement="initial")
    assert _convs(m, a2d2c.A2D2Conv2d) == ["conv1"]
    assert n_params(m) == tv + 3 * 7 * 7 * 3 * 64
    assert round(n_params(m) / 1e6, 2) == 11.72
    # terminal: a 1×1 512→512 layer (K=4) + its BatchNorm: 11.69M → 12.74M.
    m = build_meta("resnet18_a2d2c_plus", placement="terminal")
    assert _convs(m, a2d2c.A2D2Conv2d) == ["terminal.conv"]
    assert n_params(m) == tv + 4 * 512 * 512 + 2 * 512
    assert round(n_params(m) / 1e6, 2) == 12.74
    m = build_meta("resnet18_a2d2c", placement="median")
    assert _convs(m, a2d2c.A2D2Conv2d) == ["layer3.0.conv1"]
    assert n_params(m) == tv + 3 * 3 * 3 * 128 * 256
    m = build_meta("resnet18_a2d2c", placement="block-initial", num_kernels=8)
    assert _convs(m, a2d2c.A2D2Conv2d) == [f"layer{i}.{j}.conv1" for i in range(1, 5)
                                           for j in range(2)]
    m = build_meta("resnet18_a2d2c")  # "all": the 16 3×3 block convs
    names = _convs(m, a2d2c.A2D2Conv2d)
    assert len(names) == 16 and all(".conv" in n and "downsample" not in n for n in names)
    assert m.conv1.__class__ is nn.Conv2d
    m = build_meta("resnet18_a2d2c", placement=lambda n: n == "layer2.0.conv2")
    assert _convs(m, a2d2c.A2D2Conv2d) == ["layer2.0.conv2"]


def test_a2d2c_placements_resnet50_and_mobilenetv2():
    m = build_meta("resnet50_a2d2c")
    names = _convs(m, a2d2c.A2D2Conv2d)
    assert len(names) == 16 and all(n.endswith("conv2") for n in names)  # the 3×3s
    m = build_meta("mobilenetv2_050_a2d2c")
    names = _convs(m, a2d2c.A2D2Conv2d)
    # 17 inverted residuals: 3 convs each except the first (no expansion): 50, + the last 1×1.
    assert len(names) == 51 and "features.0.0" not in names and "features.18.0" in names
    m = build_meta("mobilenetv2_050_a2d2c", placement="initial")
    assert _convs(m, a2d2c.A2D2Conv2d) == ["features.0.0"]
    with pytest.raises(ValueError, match="ResNet only"):
        build_meta("mobilenetv2_050_a2d2c", placement="median")


def test_a2d2c_conv_kwargs_reach_the_layer():
    m = build_meta("resnet18_a2d2c", num_kernels=3, conv_kwargs=dict(num_points=7, head="mlp"))
    layer = m.layer1[0].conv1
    assert (layer.num_kernels, layer.num_points, layer.head) == (3, 7, "mlp")
    assert layer.impl == "auto"  # registry A²D²C runs the cheapest exact form
    assert build_meta("resnet18_a2d2c_plus").layer1[0].conv1.impl == "plus"
    assert build_meta("resnet18_a2d2c", impl="unfold").layer1[0].conv1.impl == "unfold"
    assert build_meta("resnet18_a2d2c", impl="kernel").layer1[0].conv1.impl == "kernel"
    m = build_meta("resnet18", conv="a2d2c", placement="initial")
    assert isinstance(m.conv1, a2d2c.A2D2Conv2d)


# ----------------------------------------------------------------------------- published counts
# SPEC §3: ResNet-18/50 at 224², 1000 classes; MobileNetV2 widths. Within 1%.
PUBLISHED = [
    ("resnet18_dynamicconv", {}, 45.47),
    ("resnet18_dcd", {}, 14.70),
    ("resnet18_odconv", {}, 44.90),
    ("resnet18_odconv_1x", {}, 11.94),
    ("resnet50_odconv", {}, 90.67),
    ("mobilenetv2_100_odconv", {}, 11.51),
    ("mobilenetv2_075_odconv", {}, 7.50),
    ("mobilenetv2_050_odconv", {}, 4.44),
    # the paper's Tables 4-5 (ImageNet): CondConv 8x in every conv, DynamicConv and DCD R-50
    ("resnet18_condconv", {}, 89.89),
    ("resnet50_condconv", {}, 189.92),
    ("resnet50_dynamicconv", {}, 100.88),
    ("resnet50_dcd", {}, 29.84),
    # DynamicConv MobileNetV2 (Table 3)
    ("mobilenetv2_050_dynamicconv", {}, 4.57),
    ("mobilenetv2_100_dynamicconv", {}, 12.40),
]


@pytest.mark.parametrize("name, overrides, millions", PUBLISHED)
def test_published_parameter_counts(name, overrides, millions):
    n = n_params(build_meta(name, **overrides))
    assert abs(n / 1e6 - millions) / millions < 0.01, (name, n)


def test_condconv_81m_reconstruction():
    # SPEC §3: "CondConv 8x ResNet-18 is quoted as 81.35M ... state which convs".
    from a2d2c.paper.figures import condconv_late

    m = build_meta("resnet18_condconv", placement=condconv_late, classifier="dynamic")
    assert m.dynamic_convs == ["layer3.1.conv1", "layer3.1.conv2", "layer4.0.conv1",
                               "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2", "fc"]
    assert abs(n_params(m) / 1e6 - 81.35) < 0.02
    # every 3×3 block conv (no classifier experts): the 88.6M of SPEC §3
    assert round(n_params(build_meta("resnet18_condconv", placement="all")) / 1e6, 1) == 88.6


def test_dynamic_classifier_choice():
    assert type(a2d2c.create_model("resnet18_dcd", width_mult=0.25).fc).__name__ == "DCDLinear"
    m = a2d2c.create_model("resnet18_dcd", width_mult=0.25, classifier="linear")
    assert type(m.fc) is nn.Linear
    with pytest.raises(ValueError, match="classifier='dynamic' exists for conv types"):
        a2d2c.create_model("resnet18_odconv", classifier="dynamic")
    with pytest.raises(ValueError, match="classifier must be one of"):
        a2d2c.create_model("resnet18_dcd", classifier="mlp")


def test_backbone_init_leaves_dynamic_layers_alone():
    # MobileNetV2 initialises its Linear classifier N(0, 0.01); the attention Linears
    # inside dynamic layers must keep their own (nn.Linear default, U(±1/√fan_in)).
    torch.manual_seed(0)
    m = a2d2c.create_model("mobilenetv2_050_a2d2c", conv_kwargs=dict(head="mlp"))
    fc1 = m.features[2].conv[0][0].fc1
    bound = 1 / fc1.in_features ** 0.5
    assert fc1.weight.abs().max() > 0.5 * bound > 0.05
    assert m.classifier[1].weight.std() < 0.02


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
        build_meta("resnet18_a2d2c", placement=lambda n: n == "layer9.conv1")
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
@needs_timm
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


@needs_timm
def test_timm_registration_without_importing_timm_eagerly():
    # `import a2d2c` must not pay for importing timm; importing timm later registers.
    import os
    import pathlib
    import subprocess
    import sys

    src = str(pathlib.Path(a2d2c.__file__).resolve().parents[1])  # this checkout's a2d2c
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    code = ("import sys, a2d2c; assert 'timm' not in sys.modules; import timm; "
            "m = timm.create_model('resnet18_odconv', width_mult=0.125, num_classes=3); "
            "print(type(m).__name__, m.fc.out_features)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout
    assert out.split() == ["ResNet", "3"]


@needs_timm
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
def _small(name: str) -> tuple[nn.Module, int]:
    if name in ("vit_small", "swin_tiny"):  # timm's real models, at a tiny resolution
        return a2d2c.create_model(name, num_classes=7, img_size=16), 16
    return a2d2c.create_model(name, num_classes=7, width_mult=0.125, stem="cifar"), 16


@pytest.mark.parametrize("name", a2d2c.list_models())
def test_registry_sweep_forward_backward(name):
    if name in ("vit_small", "swin_tiny") and timm is None:
        pytest.skip("built by timm, which is not installed")
    torch.manual_seed(0)
    model, size = _small(name)
    model.train()
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    with_grad = sum(p.numel() for p in model.parameters() if p.grad is not None)
    assert with_grad == n_params(model)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["resnet18_a2d2c", "resnet18_odconv", "resnet50_dcd",
                                  "mobilenetv2_050_dynamicconv", "resnet18_condconv"])
def test_cuda_matches_cpu(name, monkeypatch):
    from a2d2c.profiling import count_madds

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compare in true fp32
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    model, size = _small(name)
    model.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = model(x)
        out = model.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)
    cpu_madds = count_madds(model.cpu(), (3, size, size)).madds
    assert count_madds(model.cuda(), (3, size, size)).madds == cpu_madds


@pytest.mark.parametrize("name", ["resnet18_a2d2c_plus", "resnet18_condconv",
                                  "resnet18_dynamicconv", "resnet18_dcd", "resnet18_odconv"])
def test_short_training_keeps_a_finite_falling_loss(name):
    # SGD at the recipes' lr 0.1 (momentum 0.9) memorising 64 random images: every loss finite
    # and the last steps clearly below the first. DCD without the authors' latent BatchNorms
    # failed this (non-finite loss by step 5: its dynamic classifier is quadratic in x).
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 16, 16, generator=g), torch.randint(0, 10, (64,), generator=g)
    torch.manual_seed(0)
    model = a2d2c.create_model(name, num_classes=10, in_chans=1, stem="cifar", width_mult=0.125)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    losses = []
    for step in range(30):
        i = (step % 2) * 32
        loss = torch.nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses), losses
    assert sum(losses[-5:]) < 0.85 * sum(losses[:5]), losses


def test_dcd_classifier_normalises_like_the_convs():
    from a2d2c.layers.dcd import DCDConv2d

    for norm, cls in [(None, nn.GroupNorm), ("batch", nn.BatchNorm1d)]:
        kw = {} if norm is None else {"conv_kwargs": {"latent_norm": norm}}
        model = a2d2c.create_model("resnet18_dcd", width_mult=0.25, num_classes=10, **kw)
        assert isinstance(model.fc.norm_q, cls)
        convs = [m for m in model.modules() if isinstance(m, DCDConv2d)]
        assert convs and all(m.latent_norm == (norm or "layer") for m in convs)
