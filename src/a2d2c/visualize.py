"""Where A²D²C looks and how it mixes its kernels (the paper's Fig. 4), as PNG files.

For every chosen :class:`~a2d2c.layers.a2d2c.A2D2Conv2d` of a model, one forward pass on
one image records

* the output positions the layer sampled (``sample_points`` drawn under ``seed``, then
  passed to the layer explicitly, so they are exactly the ones its forward used),
* the layer's output (shown as the mean over output channels, the "feature map"),
* the attention ``π (K, O)`` it mixed its K kernels with (``A2D2Conv2d.attention``),

and :func:`plot_layer_view` draws them: the sampled positions as receptive-field centres on
the input image and as grid positions on the feature map, ``π`` as a K × O heat map and
its mean per kernel as bars. :func:`visualize` does all of it; ``a2d2c visualize`` is the
command line over it.

Mapping positions to pixels: output position ``p`` of an ``H' × W'`` grid is row
``p // W'``, column ``p % W'``; its receptive field in the layer's *input* grid is centred
at ``row · stride − padding + dilation · (kernel − 1) / 2`` (per axis). When the layer
does not see the image itself (a deeper layer, whose input is a downsampled map), the
centre is carried to image pixels by the ratio of the sizes,
``(c + 0.5) · H_image / H_in − 0.5``: exact for the layer's own stride, approximate for
the layers before it (it treats their downsampling as an even resampling).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .layers.a2d2c import EVAL_SAMPLINGS, A2D2Conv2d

__all__ = [
    "MODES",
    "LayerView",
    "capture_layer_views",
    "dataset_image",
    "find_a2d2c_layers",
    "layer_to_image_coords",
    "load_image",
    "load_model",
    "model_in_chans",
    "plot_layer_view",
    "receptive_field_centres",
    "select_layers",
    "visualize",
]

MODES = ("train", "eval")


@dataclass
class LayerView:
    """What one A2D2Conv2d did on one image (batch of 1)."""

    name: str
    mode: str  # the layer's effective sampling: "random", "fixed" or "global"
    stride: tuple[int, int]
    input_size: tuple[int, int]  # (H, W) of the layer's input
    output_size: tuple[int, int]  # (H', W')
    image_size: tuple[int, int]  # (H, W) of the model's input image
    points: Tensor | None  # (N, M) flattened output positions used; None: all positions
    centres: Tensor | None  # (N, M, 2) receptive-field centres (y, x) in image pixels
    feature: Tensor  # (H', W'): mean over output channels of the layer's output
    attention: Tensor  # (K, O): π of the image, sums to 1 over K


def find_a2d2c_layers(model: nn.Module) -> dict[str, A2D2Conv2d]:
    """Every :class:`A2D2Conv2d` of ``model`` by qualified name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, A2D2Conv2d)}


def select_layers(model: nn.Module, names: Sequence[str] | None = None,
                  max_layers: int | None = 8) -> dict[str, A2D2Conv2d]:
    """The layers to show: ``names`` (all must exist), else the first ``max_layers``."""
    found = find_a2d2c_layers(model)
    if not found:
        raise ValueError(f"model {type(model).__name__} has no A2D2Conv2d layer to visualize; "
                         "build it with conv='a2d2c' or 'a2d2c+' (e.g. a *_a2d2c_plus model)")
    if names:
        unknown = [n for n in names if n not in found]
        if unknown:
            close = difflib.get_close_matches(unknown[0], found, n=3)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"layer {unknown[0]!r} is not an A2D2Conv2d of this model{hint} "
                             f"(valid: {', '.join(found)})")
        return {n: found[n] for n in names}
    if max_layers is not None:
        if isinstance(max_layers, bool) or not isinstance(max_layers, int) or max_layers < 1:
            raise ValueError(f"max_layers must be a positive int or None, got {max_layers!r}")
        return dict(list(found.items())[:max_layers])
    return found


def receptive_field_centres(layer: A2D2Conv2d, points: Tensor,
                            output_size: Sequence[int]) -> Tensor:
    """Centres ``(..., 2)`` as ``(y, x)`` in the layer's input grid of flattened positions."""
    wo = int(output_size[1])
    oy = torch.div(points, wo, rounding_mode="floor").double()
    ox = (points - torch.div(points, wo, rounding_mode="floor") * wo).double()
    (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
    (ph, pw), (dh, dw) = layer.padding, layer.dilation
    cy = oy * sh - ph + dh * (kh - 1) / 2
    cx = ox * sw - pw + dw * (kw - 1) / 2
    return torch.stack([cy, cx], dim=-1)


def layer_to_image_coords(centres: Tensor, input_size: Sequence[int],
                          image_size: Sequence[int]) -> Tensor:
    """Carry ``(y, x)`` of a layer's input grid to image pixels (identity at equal sizes)."""
    out = centres.clone()
    for axis in (0, 1):
        if int(input_size[axis]) != int(image_size[axis]):
            scale = int(image_size[axis]) / int(input_size[axis])
            out[..., axis] = (centres[..., axis] + 0.5) * scale - 0.5
    return out


def _effective_mode(layer: A2D2Conv2d) -> str:
    if layer.sampling == "random" and not layer.training:
        return layer.eval_sampling
    return layer.sampling


@torch.no_grad()
def capture_layer_views(model: nn.Module, image: Tensor, *,
                        layers: Sequence[str] | None = None, mode: str = "train",
                        seed: int = 0, max_layers: int | None = 8,
                        eval_sampling: str | None = None) -> list[LayerView]:
    """Run ``model`` on one image and record what the chosen A2D2Conv2d layers did.

    Args:
        model: any module with A2D2Conv2d layers.
        image: the model input, ``(C, H, W)`` or ``(1, C, H, W)``.
        layers: qualified layer names (default: every A2D2Conv2d, up to ``max_layers``).
        mode: ``"train"``: the A2D2Conv2d layers sample as in training (random points;
            normalisation and dropout stay in eval mode, so the maps are those of the
            trained statistics); ``"eval"``: the whole model in eval mode (the layers use
            their ``eval_sampling``).
        seed: ``torch.manual_seed(seed)`` right before the pass; the sampled points are
            those :meth:`A2D2Conv2d.sample_points` returns after that seeding, in module
            order.
        eval_sampling: set ``eval_sampling`` (``"global"`` or ``"fixed"``) of every
            A2D2Conv2d for this pass (default: keep the model's).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if eval_sampling is not None and eval_sampling not in EVAL_SAMPLINGS:
        raise ValueError(f"eval_sampling must be one of {EVAL_SAMPLINGS}, got {eval_sampling!r}")
    if not isinstance(image, Tensor) or image.dim() not in (3, 4) or (
            image.dim() == 4 and image.shape[0] != 1):
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a tensor (C, H, W) or (1, C, H, W), got {shape}")
    x = image.unsqueeze(0) if image.dim() == 3 else image
    chosen = select_layers(model, layers, max_layers)
    everyone = find_a2d2c_layers(model)
    flags = {m: m.training for m in model.modules()}
    saved_eval = {m: m.eval_sampling for m in everyone.values()}
    records: dict[str, dict[str, Any]] = {}
    handles = []

    def pre_hook(name: str):
        def hook(mod: A2D2Conv2d, args: tuple) -> tuple:
            inp = args[0]
            given = args[1] if len(args) > 1 else None
            ho, wo = mod.geometry.output_size(int(inp.shape[-2]), int(inp.shape[-1]))
            pts = given if given is not None else mod.sample_points(inp.shape[0], (ho, wo),
                                                                    inp.device)
            if pts is not None and pts.dim() == 2:
                pts = pts.unsqueeze(0).expand(inp.shape[0], -1, -1)
            records[name] = {"input": inp, "points": pts, "output_size": (ho, wo),
                             "input_size": (int(inp.shape[-2]), int(inp.shape[-1])),
                             "mode": _effective_mode(mod)}
            return (inp, pts)
        return hook

    def post_hook(name: str):
        def hook(mod: A2D2Conv2d, args: tuple, out: Tensor) -> None:
            rec = records[name]
            rec["feature"] = out[0].float().mean(0).cpu()
            rec["attention"] = mod.attention(rec["input"], rec["points"])[0].float().cpu()
            del rec["input"]
        return hook

    try:
        model.eval()
        for m in everyone.values():
            if mode == "train":
                m.train()
            if eval_sampling is not None:
                m.eval_sampling = eval_sampling
        for name, m in chosen.items():
            handles.append(m.register_forward_pre_hook(pre_hook(name)))
            handles.append(m.register_forward_hook(post_hook(name)))
        torch.manual_seed(seed)
        model(x)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
        for m, value in saved_eval.items():
            m.eval_sampling = value

    image_size = (int(x.shape[-2]), int(x.shape[-1]))
    views = []
    for name, layer in chosen.items():
        if name not in records:
            raise RuntimeError(f"layer {name!r} did not run in the model's forward pass")
        rec = records[name]
        pts = rec["points"]
        pts = None if pts is None else pts[0].cpu()
        centres = None if pts is None else layer_to_image_coords(
            receptive_field_centres(layer, pts, rec["output_size"]), rec["input_size"],
            image_size)
        views.append(LayerView(name=name, mode=rec["mode"], stride=tuple(layer.stride),
                               input_size=rec["input_size"], output_size=rec["output_size"],
                               image_size=image_size, points=pts, centres=centres,
                               feature=rec["feature"], attention=rec["attention"]))
    return views


# ---------------------------------------------------------------------------- drawing
_DRAW_COLOURS = ("#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#ff2dd2", "#00e5ff")


def _display_image(image: Tensor) -> Tensor:
    """``(H, W)`` or ``(H, W, 3)`` in [0, 1] for ``imshow``: channels min–max scaled."""
    img = image.detach().float().cpu()
    if img.dim() == 4:
        img = img[0]
    lo = img.amin(dim=(1, 2), keepdim=True)
    hi = img.amax(dim=(1, 2), keepdim=True)
    img = (img - lo) / (hi - lo).clamp_min(1e-12)
    if img.shape[0] == 1:
        return img[0]
    if img.shape[0] == 3:
        return img.permute(1, 2, 0)
    return img.mean(0)


def plot_layer_view(view: LayerView, image: Tensor, path: str | os.PathLike | None = None,
                    *, dpi: int = 110) -> Any:
    """Draw one :class:`LayerView` (2 × 2 panels) and save it as PNG when ``path`` is given.

    Panels: the input image with the receptive-field centres of the sampled positions
    (one colour per draw), the feature map (mean over output channels) with the sampled
    grid positions, ``π`` as a K × O heat map, and its mean over output channels per
    kernel as bars. Returns the matplotlib ``Figure`` (closed when saved); the scatter of
    the first two panels holds ``(x, y)`` = (column, row) of every drawn point.
    """
    from ._optional import require

    matplotlib = require("matplotlib", "drawing")
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    disp = _display_image(image)
    ho, wo = view.output_size
    k, o = view.attention.shape
    fig, axes = plt.subplots(2, 2, figsize=(10, 8.5))
    ax_img, ax_feat, ax_pi, ax_bar = axes.ravel()
    gray = "gray" if disp.dim() == 2 else None
    ax_img.imshow(disp.numpy(), cmap=gray, interpolation="nearest")
    ax_feat.imshow(view.feature.numpy(), cmap="viridis", interpolation="nearest")
    if view.points is None:
        where = f"all {ho}×{wo} positions ({view.mode}: no sampling)"
    else:
        n, m = view.points.shape
        where = f"{m} of {ho}×{wo} positions × {n} draw{'s' if n > 1 else ''} ({view.mode})"
        wo_t = torch.tensor(wo)
        for d in range(n):
            colour = _DRAW_COLOURS[d % len(_DRAW_COLOURS)]
            cy, cx = view.centres[d, :, 0], view.centres[d, :, 1]
            ax_img.scatter(cx.numpy(), cy.numpy(), s=14, c=colour, edgecolors="black",
                           linewidths=0.4, label=f"draw {d}" if n > 1 else None)
            py = torch.div(view.points[d], wo_t, rounding_mode="floor")
            px = view.points[d] - py * wo
            ax_feat.scatter(px.numpy(), py.numpy(), s=14, c=colour, edgecolors="black",
                            linewidths=0.4)
        if n > 1:
            ax_img.legend(loc="upper right", fontsize=7)
    ih, iw = view.input_size
    what = "receptive-field centres" if view.points is not None else "no points (global)"
    ax_img.set_title(f"image {view.image_size[0]}×{view.image_size[1]} (layer input {ih}×{iw}): "
                     f"{what}", fontsize=9)
    ax_feat.set_title(f"output {ho}×{wo} (mean over channels), stride "
                      f"{view.stride[0]}×{view.stride[1]}", fontsize=9)
    for ax in (ax_img, ax_feat):
        ax.set_xticks([])
        ax.set_yticks([])
    heat = ax_pi.imshow(view.attention.numpy(), aspect="auto", cmap="magma",
                        interpolation="nearest")
    ax_pi.set_xlabel("output channel o")
    ax_pi.set_ylabel("kernel k")
    ax_pi.set_yticks(range(k))
    ax_pi.set_title(f"attention π (K={k} × O={o})", fontsize=9)
    fig.colorbar(heat, ax=ax_pi, fraction=0.046, pad=0.04)
    mean = view.attention.mean(1)
    ax_bar.bar(range(k), mean.numpy(), color="#0a84ff")
    ax_bar.axhline(1 / k, color="black", linestyle="--", linewidth=0.8, label="uniform 1/K")
    ax_bar.set_xticks(range(k))
    ax_bar.set_xlabel("kernel k")
    ax_bar.set_ylabel("mean π over output channels")
    ax_bar.legend(fontsize=8)
    ax_bar.set_title("mean attention per kernel", fontsize=9)
    fig.suptitle(f"{view.name}: {where}", fontsize=11)
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
    return fig


def visualize(model: nn.Module, image: Tensor, out_dir: str | os.PathLike, *,
              layers: Sequence[str] | None = None, mode: str = "train", seed: int = 0,
              max_layers: int | None = 8, eval_sampling: str | None = None,
              display: Tensor | None = None, prefix: str = "") -> list[Path]:
    """Capture (:func:`capture_layer_views`) and draw (:func:`plot_layer_view`) each layer.

    ``display`` is the image to draw under the points (default: ``image`` itself, each
    channel min–max scaled); it must have the model input's height and width. Writes
    ``<out_dir>/<prefix><layer name>.png`` per layer and returns the paths.
    """
    views = capture_layer_views(model, image, layers=layers, mode=mode, seed=seed,
                                max_layers=max_layers, eval_sampling=eval_sampling)
    shown = image if display is None else display
    if tuple(shown.shape[-2:]) != tuple(image.shape[-2:]):
        raise ValueError(f"display must have the input's size {tuple(image.shape[-2:])}, got "
                         f"{tuple(shown.shape[-2:])}")
    paths = []
    for v in views:
        path = Path(out_dir) / f"{prefix}{v.name}.png"
        plot_layer_view(v, shown, path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------- inputs
def load_model(*, checkpoint: str | os.PathLike | None = None, model_name: str | None = None,
               num_classes: int | None = None, in_chans: int | None = None,
               model_kwargs: dict[str, Any] | None = None,
               data_overrides: dict[str, Any] | None = None) -> tuple[nn.Module, Any]:
    """A model to look at and its data config (``None`` for a bare registered model).

    ``checkpoint``: a ``.pt`` written by ``a2d2c train`` or released ``.safetensors``;
    the model is rebuilt from the config stored with it (``engine.load_weights``) and the
    weights loaded strictly. ``num_classes``/``in_chans`` are read from the dataset
    (``data_overrides`` such as ``{"root": ...}`` adjust its config); pass them
    explicitly when the dataset is not on this machine. ``model_name``: a registered
    model with random weights (``num_classes`` default 10, ``in_chans`` default 3,
    ``model_kwargs`` passed to ``create_model``).
    """
    if (checkpoint is None) == (model_name is None):
        raise ValueError("give exactly one of checkpoint (a trained model) or model_name "
                         "(a registered model with random weights)")
    if model_name is not None:
        from .models import create_model

        model = create_model(model_name, num_classes=10 if num_classes is None else num_classes,
                             in_chans=3 if in_chans is None else in_chans,
                             **(model_kwargs or {}))
        return model, None
    from dataclasses import replace

    from .engine import load_model_state, load_weights
    from .engine.build import build_model

    state, cfg = load_weights(checkpoint)
    if data_overrides:
        cfg = replace(cfg, data=replace(cfg.data, **data_overrides))
    if num_classes is None or in_chans is None:
        from .data import dataset_info

        try:
            info = dataset_info(cfg.data)
        except (FileNotFoundError, ValueError) as e:
            raise FileNotFoundError(
                f"cannot tell the model's classes and input channels: {e} — pass the data "
                "root, or num_classes and in_chans explicitly") from None
        num_classes = info.num_classes if num_classes is None else num_classes
        in_chans = info.in_chans if in_chans is None else in_chans
    model = build_model(cfg, num_classes, in_chans, pretrained=False)
    load_model_state(model, state, source=f"checkpoint {checkpoint}",
                     expected_name=cfg.model.name)
    return model, cfg.data


def _normalization(transform: Any) -> tuple[Tensor, Tensor] | None:
    """``(mean, std)`` of the last normalising step of a data-registry transform."""
    for t in reversed(getattr(transform, "transforms", [])):
        mean, std = getattr(t, "mean", None), getattr(t, "std", None)
        if isinstance(mean, Tensor) and isinstance(std, Tensor):
            return mean.view(-1, 1, 1), std.view(-1, 1, 1)
    return None


def dataset_image(data_cfg: Any, index: int, split: str = "val") -> tuple[Tensor, int]:
    """Image ``index`` of a registered dataset's ``split`` with its evaluation transform.

    ``data_cfg`` is an engine ``DataConfig`` (augmentation is switched off). Returns the
    model input ``(C, H, W)`` and the label.
    """
    from dataclasses import replace

    from .data import get_dataset_spec

    raw, transform = get_dataset_spec(data_cfg.name).build(split, replace(data_cfg,
                                                                          augment=False))
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(raw):
        raise ValueError(f"index must be an int in [0, {len(raw)}) for the {split} split of "
                         f"{data_cfg.name}, got {index!r}")
    img, label = raw[index]
    return transform(img, torch.Generator().manual_seed(0)), int(label)


def load_image(path: str | os.PathLike, in_chans: int, *, img_size: int | None = None,
               normalization: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """A PNG/JPEG file as a model input ``(C, H, W)``.

    Converted to grey (``in_chans=1``) or RGB (3), resized to ``img_size × img_size`` when
    given, scaled to [0, 1] and normalised with ``(mean, std)`` when given.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3 to read an image file, got {in_chans}")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if in_chans == 1 else "RGB")
            if img_size is not None:
                im = im.resize((img_size, img_size), Image.BILINEAR)
            data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
            x = data.view(im.size[1], im.size[0], in_chans).permute(2, 0, 1).float() / 255
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image file PIL can read (PNG, JPEG, ...)") from None
    if normalization is not None:
        mean, std = normalization
        x = (x - mean) / std
    return x


def model_in_chans(model: nn.Module) -> int:
    """Input channels of the first convolution of ``model``."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, A2D2Conv2d)) or (
                hasattr(m, "in_channels") and hasattr(m, "kernel_size")):
            return int(m.in_channels)
    raise ValueError(f"cannot find a convolution in {type(model).__name__} to tell its input "
                     "channels")
