"""``a2d2c visualize`` and ``A2D2Conv2d.attention``: what is drawn is what the layer used.

Facts checked independently of the code under test: π against the SPEC's formula (means
of the K base responses at the given positions, softmax over K) and the layer's output
against ``Σ_k π_k · conv(x, W_k)`` in float64; receptive-field centres against the
support of ``∂y[p]/∂x`` of a plain convolution; the points against ``sample_points``
under the same seed; PNGs by their signature and size.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from a2d2c import A2D2Conv2d
from a2d2c.cli import main as cli_main
from a2d2c.visualize import (
    capture_layer_views,
    layer_to_image_coords,
    load_image,
    plot_layer_view,
    receptive_field_centres,
    select_layers,
    visualize,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HAS_DATA = importlib.util.find_spec("a2d2c.data") is not None


def tiny_model(num_points: int = 20, **kw) -> nn.Sequential:
    """A static stride-2 stem, then two A2D2Conv2d layers (stride 1 and stride 2)."""
    torch.manual_seed(123)
    return nn.Sequential(
        nn.Conv2d(1, 4, 2, stride=2),  # 32x32 -> 16x16: each output pixel covers 2x2 pixels
        nn.BatchNorm2d(4),
        nn.ReLU(),
        A2D2Conv2d(4, 6, 3, padding=1, num_kernels=3, num_points=num_points, impl="plus", **kw),
        nn.ReLU(),
        A2D2Conv2d(6, 8, 3, stride=2, padding=1, num_kernels=2, num_points=num_points,
                   impl="kernel", head="mlp", **kw),
    )


def synthetic_image(h: int = 32, w: int = 32) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (torch.sin(yy / 3.0) * torch.cos(xx / 5.0)).unsqueeze(0).float()


# ------------------------------------------------------------------ A2D2Conv2d.attention
@pytest.mark.parametrize("impl", ["plus", "kernel"])
def test_attention_is_the_softmax_of_sampled_means_and_mixes_the_output(impl: str) -> None:
    torch.manual_seed(0)
    layer = A2D2Conv2d(3, 5, 3, stride=2, padding=1, num_kernels=4, num_points=7, num_draws=2,
                       impl=impl, temperature=2.0).double()
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    points = torch.randint(0, 5 * 6, (2, 2, 7))
    pi = layer.attention(x, points)
    # independent: the K base responses with F.conv2d, means at the points, softmax over K
    feats = torch.stack([F.conv2d(x, layer.weight[k], layer.bias[k], 2, 1) for k in range(4)],
                        1)  # (B, K, O, 5, 6)
    flat = feats.flatten(3)
    expect = torch.zeros(2, 4, 5, dtype=torch.float64)
    for b in range(2):
        for n in range(2):
            pbar = flat[b][:, :, points[b, n]].mean(-1)  # (K, O)
            expect[b] += torch.softmax(pbar / 2.0, dim=0) / 2
    torch.testing.assert_close(pi, expect)
    torch.testing.assert_close(pi.sum(1), torch.ones(2, 5, dtype=torch.float64))
    y = layer(x, points=points)
    torch.testing.assert_close(y, (pi[..., None, None] * feats).sum(1))


def test_attention_leaves_the_layer_unchanged() -> None:
    layer = A2D2Conv2d(2, 3, 3, padding=1, num_points=5)
    x = torch.randn(1, 2, 6, 6)
    pts = torch.arange(5).view(1, 5)
    layer.attention(x, pts)
    assert "_attention" not in layer.__dict__
    torch.testing.assert_close(layer(x, points=pts), layer(x, points=pts))


# ------------------------------------------------------------------ coordinates
@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (3, 2, 1, 1), (5, 2, 2, 1), (3, 2, 2, 2),
                                     (4, 3, 0, 1)])
def test_receptive_field_centres_match_the_gradient_support(k: int, s: int, p: int,
                                                            d: int) -> None:
    layer = A2D2Conv2d(1, 1, k, stride=s, padding=p, dilation=d, num_kernels=1)
    h, w = 8, 7
    ho = (h + 2 * p - d * (k - 1) - 1) // s + 1
    wo = (w + 2 * p - d * (k - 1) - 1) // s + 1
    positions = torch.arange(ho * wo)
    got = receptive_field_centres(layer, positions, (ho, wo))
    # independent: an explicitly padded input, a conv without padding, the support of the
    # gradient of one output position, its bounding-box centre minus the padding
    xp = torch.zeros(1, 1, h + 2 * p, w + 2 * p, requires_grad=True)
    y = F.conv2d(xp, torch.ones(1, 1, k, k), stride=s, dilation=d).flatten()
    for pos in range(ho * wo):
        (grad,) = torch.autograd.grad(y[pos], xp, retain_graph=True)
        ys, xs = torch.nonzero(grad[0, 0], as_tuple=True)
        centre = torch.tensor([(ys.min() + ys.max()) / 2 - p, (xs.min() + xs.max()) / 2 - p],
                              dtype=torch.float64)
        torch.testing.assert_close(got[pos], centre)


def test_downsampled_grid_maps_to_the_centre_of_its_pixel_block() -> None:
    # a 16x16 grid made by 2x2 blocks of a 32x32 image: cell (i, j) covers image pixels
    # 2i..2i+1, 2j..2j+1, whose centre is (2i + 0.5, 2j + 0.5)
    c = torch.tensor([[0.0, 0.0], [3.0, 7.0], [15.0, 15.0]], dtype=torch.float64)
    got = layer_to_image_coords(c, (16, 16), (32, 32))
    torch.testing.assert_close(got, 2 * c + 0.5)
    torch.testing.assert_close(layer_to_image_coords(c, (16, 16), (16, 16)), c)


# ------------------------------------------------------------------ capture and drawing
def test_captured_points_are_those_sample_points_draws_for_the_seed() -> None:
    model = tiny_model()
    l1, l2 = model[3], model[5]
    views = capture_layer_views(model, synthetic_image(), mode="train", seed=7)
    assert [v.name for v in views] == ["3", "5"]
    # independent: the same seed, then the two layers' draws in module order
    torch.manual_seed(7)
    p1 = l1.sample_points(1, (16, 16))
    p2 = l2.sample_points(1, (8, 8))
    assert torch.equal(views[0].points, p1[0]) and torch.equal(views[1].points, p2[0])
    assert views[0].points.shape == (1, 20) and views[0].mode == "random"
    assert views[0].output_size == (16, 16) and views[1].output_size == (8, 8)
    assert views[1].input_size == (16, 16) and views[1].image_size == (32, 32)
    # another seed, other points
    other = capture_layer_views(model, synthetic_image(), mode="train", seed=8)
    assert not torch.equal(other[0].points, views[0].points)
    # feature map: the mean over channels of the layer's output for those points
    model.eval()  # capture runs normalisation in eval mode
    with torch.no_grad():
        x = model[2](model[1](model[0](synthetic_image().unsqueeze(0))))
        y = l1(x, points=p1)
    torch.testing.assert_close(views[0].feature, y[0].mean(0))
    torch.testing.assert_close(views[0].attention.sum(0), torch.ones(6))


def test_drawn_points_are_the_sampled_positions_in_pixels() -> None:
    pytest.importorskip("matplotlib")
    model = tiny_model()
    image = synthetic_image()
    view = capture_layer_views(model, image, layers=["5"], seed=3)[0]
    fig = plot_layer_view(view, image)
    try:
        on_image = fig.axes[0].collections[0].get_offsets()
        on_feature = fig.axes[1].collections[0].get_offsets()
    finally:
        from matplotlib import pyplot as plt

        plt.close(fig)
    torch.manual_seed(3)
    model[3].sample_points(1, (16, 16))  # the first layer draws first
    pts = model[5].sample_points(1, (8, 8))[0, 0]
    oy, ox = pts // 8, pts % 8
    # layer 5: 3x3, stride 2, padding 1 -> centre 2·o in its 16x16 input; that grid is
    # 2x2 blocks of the 32x32 image -> 2·(2·o) + 0.5
    expect_img = torch.stack([4 * ox + 0.5, 4 * oy + 0.5], 1).double()
    torch.testing.assert_close(torch.as_tensor(on_image, dtype=torch.float64), expect_img)
    torch.testing.assert_close(torch.as_tensor(on_feature, dtype=torch.float64),
                               torch.stack([ox, oy], 1).double())


def test_eval_mode_global_has_no_points_and_fixed_shows_the_fixed_set() -> None:
    model = tiny_model()
    image = synthetic_image()
    views = capture_layer_views(model, image, mode="eval", seed=0)
    assert all(v.points is None and v.centres is None and v.mode == "global" for v in views)
    fixed = capture_layer_views(model, image, mode="eval", seed=0, eval_sampling="fixed")
    again = capture_layer_views(model, image, mode="eval", seed=99, eval_sampling="fixed")
    model.eval()
    model[3].eval_sampling = "fixed"
    expect = model[3].sample_points(1, (16, 16))[0]
    model[3].eval_sampling = "global"
    assert fixed[0].mode == "fixed" and torch.equal(fixed[0].points, expect)
    assert torch.equal(again[0].points, fixed[0].points)


def test_capture_restores_modes_and_eval_sampling() -> None:
    model = tiny_model()
    model.train()
    capture_layer_views(model, synthetic_image(), mode="eval", eval_sampling="fixed")
    assert all(m.training for m in model.modules())
    assert model[3].eval_sampling == "global" and model[5].eval_sampling == "global"
    model.eval()
    capture_layer_views(model, synthetic_image(), mode="train")
    assert not any(m.training for m in model.modules())


def test_visualize_writes_one_png_per_layer(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    paths = visualize(tiny_model(), synthetic_image(), tmp_path / "out", seed=0, prefix="img_")
    assert [p.name for p in paths] == ["img_3.png", "img_5.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 20_000
        with Image.open(p) as im:
            assert im.size[0] >= 600 and im.size[1] >= 600
    assert list(select_layers(tiny_model(), max_layers=1)) == ["3"]


# ------------------------------------------------------------------ errors
def test_errors_name_the_problem(tmp_path) -> None:
    static = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    with pytest.raises(ValueError, match="no A2D2Conv2d"):
        capture_layer_views(static, synthetic_image())
    with pytest.raises(ValueError, match=r"layer '4' is not an A2D2Conv2d.*valid: 3, 5"):
        select_layers(tiny_model(), ["4"])
    with pytest.raises(ValueError, match="mode must be one of"):
        capture_layer_views(tiny_model(), synthetic_image(), mode="test")
    with pytest.raises(ValueError, match="image must be a tensor"):
        capture_layer_views(tiny_model(), torch.zeros(2, 1, 8, 8))
    with pytest.raises(FileNotFoundError, match="image not found"):
        load_image(tmp_path / "missing.png", 1)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="not an image file"):
        load_image(bad, 1)


def test_load_image_converts_resizes_and_normalises(tmp_path) -> None:
    from PIL import Image

    path = tmp_path / "rgb.png"
    Image.new("RGB", (10, 6), (255, 0, 0)).save(path)
    x = load_image(path, 3)
    assert x.shape == (3, 6, 10) and torch.equal(x[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    g = load_image(path, 1, img_size=8, normalization=(torch.tensor([0.5]).view(1, 1, 1),
                                                       torch.tensor([0.25]).view(1, 1, 1)))
    # PIL's luma of pure red: 299/1000 · 255 -> 76 of 255
    assert g.shape == (1, 8, 8)
    torch.testing.assert_close(g, torch.full((1, 8, 8), (76 / 255 - 0.5) / 0.25))


# ------------------------------------------------------------------ command line
def test_cli_model_and_image_file(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    img = tmp_path / "pic.png"
    Image.fromarray((torch.rand(16, 16) * 255).byte().numpy(), mode="L").save(img)
    rc = cli_main(["visualize", "--model", "resnet18_a2d2c_plus", "--in-chans", "1",
                   "--stem", "cifar", "--width-mult", "0.125", "--num-points", "30",
                   "--image", str(img), "--layer", "layer2.0.conv1",
                   "--out-dir", str(tmp_path / "vis")])
    out = capsys.readouterr().out
    assert rc == 0
    png = tmp_path / "vis" / "pic_layer2.0.conv1.png"
    assert str(png) in out and png.read_bytes()[:8] == PNG_SIGNATURE
    rc = cli_main(["visualize", "--model", "resnet18", "--in-chans", "1", "--image", str(img)])
    assert rc == 2 and "no A2D2Conv2d" in capsys.readouterr().err
    rc = cli_main(["visualize", "--model", "resnet18_a2d2c_plus", "--image",
                   str(tmp_path / "nope.png")])
    assert rc == 2 and "image not found" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_DATA, reason="a2d2c.data (engine branch) not available")
def test_cli_checkpoint_and_dataset_image(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    from a2d2c.engine import config_from_dict, config_to_dict, save_checkpoint
    from a2d2c.models import create_model

    cfg = config_from_dict({
        "model": {"name": "resnet18_a2d2c_plus",
                  "kwargs": {"stem": "cifar", "width_mult": 0.125,
                             "conv_kwargs": {"num_points": 30}}},
        "data": {"name": "synthetic", "num_classes": 5, "in_chans": 1, "img_size": 16,
                 "train_samples": 8, "val_samples": 4},
    })
    model = create_model("resnet18_a2d2c_plus", num_classes=5, in_chans=1, stem="cifar",
                         width_mult=0.125, conv_kwargs={"num_points": 30})
    ckpt = save_checkpoint({"format": "a2d2c-checkpoint", "version": 1,
                            "model_name": "resnet18_a2d2c_plus", "model": model.state_dict(),
                            "config": config_to_dict(cfg)}, tmp_path / "best.pt")
    from a2d2c.visualize import load_model

    loaded, data_cfg = load_model(checkpoint=ckpt)
    assert data_cfg.name == "synthetic"
    theirs = loaded.state_dict()
    assert list(theirs) == list(model.state_dict())
    for k, a in model.state_dict().items():
        assert torch.equal(a, theirs[k]), k
    rc = cli_main(["visualize", "--checkpoint", str(ckpt), "--dataset", "synthetic",
                   "--index", "2", "--layer", "layer1.0.conv1", "--out-dir",
                   str(tmp_path / "vis")])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "vis" / "synthetic2_layer1.0.conv1.png").is_file()
    rc = cli_main(["visualize", "--checkpoint", str(ckpt), "--dataset", "synthetic",
                   "--layer", "fc", "--out-dir", str(tmp_path / "vis")])
    assert rc == 2 and "'fc' is not an A2D2Conv2d" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_capture_on_cuda_uses_the_cuda_draws() -> None:
    model = tiny_model().cuda()
    views = capture_layer_views(model, synthetic_image().cuda(), seed=5)
    torch.manual_seed(5)
    p1 = model[3].sample_points(1, (16, 16), "cuda")
    assert torch.equal(views[0].points, p1[0].cpu())
    assert views[0].feature.device.type == "cpu" and views[0].attention.device.type == "cpu"
    torch.testing.assert_close(views[0].attention.sum(0), torch.ones(6))
