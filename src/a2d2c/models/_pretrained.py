"""Pretrained initialisation: ``create_model(name, pretrained=...)``.

``pretrained`` is one of

* ``True``: torchvision's ImageNet weights for the model's static architecture
  (ResNet-18, ResNet-50 v1.5, MobileNetV2 ×1.0), read from the torch hub cache
  (``$TORCH_HOME/hub/checkpoints/``, downloaded there once when online);
* a file: ``.pth``/``.pt`` (a training checkpoint of this package, or a plain
  ``state_dict``, also nested under ``"state_dict"``/``"model"``) or ``.safetensors``;
* ``"timm:<name>"``: the weights of ``timm.create_model(name, pretrained=True)``, for
  timm models whose parameter names are torchvision's (timm's ResNets).

Static layers are copied. A dynamic layer whose source is a static conv (or linear)
layer gets the static weights by :func:`a2d2c.layers.transfer.init_from_static` (the
rule shared with :func:`a2d2c.convert`: at uniform attention the network computes the
static one's function); a dynamic layer whose source already has its own parameters
(a dynamic checkpoint) is copied. The classifier is kept at its initialisation when the
number of classes differs, and the stem's weights are adapted when ``in_chans`` is not 3.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["TORCHVISION_WEIGHTS", "PretrainedError", "load_pretrained", "torchvision_weights_path"]

log = logging.getLogger("a2d2c")

# arch (model.model_args["arch"], width) → torchvision weights enum name and member.
# ImageNet-1k "V1" weights: the classic recipes (ResNet-18 69.76%, ResNet-50 76.13%,
# MobileNetV2 71.88% top-1 in torchvision's table).
TORCHVISION_WEIGHTS: dict[tuple[str, float], tuple[str, str]] = {
    ("resnet18", 1.0): ("ResNet18_Weights", "IMAGENET1K_V1"),
    ("resnet50", 1.0): ("ResNet50_Weights", "IMAGENET1K_V1"),
    ("mobilenetv2", 1.0): ("MobileNet_V2_Weights", "IMAGENET1K_V1"),
}


class PretrainedError(ValueError):
    """Pretrained weights that cannot be found, read or fitted to the model."""


def _weights_key(model: nn.Module) -> tuple[str, float]:
    args = getattr(model, "model_args", None) or {}
    return (str(args.get("arch")), float(args.get("width_mult") or 1.0))


def torchvision_weights_path(model: nn.Module) -> tuple[str, Path]:
    """The download URL and torch-hub-cache path of ``model``'s torchvision weights."""
    key = _weights_key(model)
    args = getattr(model, "model_args", None) or {}
    if key not in TORCHVISION_WEIGHTS:
        raise PretrainedError(
            f"pretrained=True: torchvision has ImageNet weights for resnet18, resnet50 and "
            f"mobilenetv2 x1.0 only, not {key[0]} x{key[1]:g}; pass a weights file or "
            "'timm:<name>'")
    if args.get("stem", "imagenet") != "imagenet" or args.get("variant") == "v1":
        raise PretrainedError(
            f"pretrained=True: torchvision's weights are for the ImageNet stem and ResNet "
            f"v1.5, but the model has stem={args.get('stem')!r}, variant={args.get('variant')!r};"
            " use stem='imagenet' (and variant='v1.5'), or pass a weights file of this model")
    import torchvision.models as tvm

    enum_name, member = TORCHVISION_WEIGHTS[key]
    url = getattr(tvm, enum_name)[member].url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _from_torchvision(model: nn.Module) -> dict[str, Tensor]:
    url, path = torchvision_weights_path(model)
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # torchvision's file names carry a SHA-256 prefix: the download is checked
            m = re.search(r"-([a-f0-9]{6,})\.", path.name)
            torch.hub.download_url_to_file(url, str(path.with_suffix(".part")),
                                           hash_prefix=m.group(1) if m else None,
                                           progress=False)
            os.replace(path.with_suffix(".part"), path)
        except (OSError, ValueError, RuntimeError) as e:  # URLError is an OSError
            raise PretrainedError(
                f"pretrained=True: torchvision's weights are not in the torch hub cache and "
                f"could not be downloaded ({type(e).__name__}: {str(e)[:120]}); put {url} at "
                f"{path} (or set TORCH_HOME), or pass pretrained='path/to/weights.pth'"
            ) from None
    return _read_file(path)


def _read_file(path: Path) -> dict[str, Tensor]:
    """A weights file through the package's one checkpoint reader (engine checkpoints,
    plain state_dicts, ``.safetensors``; prefixes cleaned), as a :class:`PretrainedError`."""
    from ..engine.checkpoint import CheckpointError, read_weights

    if not path.is_file():
        raise PretrainedError(f"pretrained weights file not found: {path}")
    if path.suffix not in (".pth", ".pt", ".bin", ".ckpt", ".safetensors"):
        raise PretrainedError(f"pretrained file {path}: expected .pth, .pt or .safetensors")
    try:
        state, _ = read_weights(path)
    except CheckpointError as e:
        raise PretrainedError(f"{path} cannot be read as weights: {e}") from None
    return state


def _from_timm(name: str) -> dict[str, Tensor]:
    try:
        import timm
    except ImportError as e:
        raise PretrainedError("pretrained='timm:...' needs timm: pip install timm") from e
    try:
        m = timm.create_model(name, pretrained=True)
    except Exception as e:  # unknown name, no internet, no cached file
        raise PretrainedError(f"pretrained='timm:{name}': timm could not provide the weights "
                              f"({type(e).__name__}: {str(e)[:160]})") from None
    from ..engine.checkpoint import strip_prefixes

    return strip_prefixes(m.state_dict())


def resolve_state_dict(model: nn.Module, source: bool | str | os.PathLike) -> dict[str, Tensor]:
    """The source ``state_dict`` of ``pretrained=source`` for ``model``."""
    if source is True:
        return _from_torchvision(model)
    if isinstance(source, str) and source.startswith("timm:"):
        return _from_timm(source[5:])
    if isinstance(source, (str, os.PathLike)):
        return _read_file(Path(source))
    raise PretrainedError(f"pretrained must be True, a weights file or 'timm:<name>', "
                          f"got {source!r}")


def _adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """RGB stem weights for ``in_chans`` input channels (timm's rule): summed for one
    channel, else repeated and rescaled so the activations keep their magnitude."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_chans // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def _classifier_name(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("classifier"):
        return cfg["classifier"]
    for name in ("fc", "classifier.1", "head.fc", "head"):
        try:
            model.get_submodule(name)
            return name
        except AttributeError:
            continue
    return None


def _dynamic_layers(model: nn.Module) -> list[str]:
    from ..layers.transfer import _rules

    types = tuple(t for t in _rules() if t not in (nn.Conv2d, nn.Linear))
    from ._placement import PooledConvClassifier

    return [n for n, m in model.named_modules()
            if isinstance(m, (*types, PooledConvClassifier))]


@torch.no_grad()
def load_pretrained(model: nn.Module, source: bool | str | os.PathLike, *,
                    noise: float = 1e-2) -> nn.Module:
    """Initialise ``model`` from ``source`` (see the module docstring); returns ``model``.

    Raises :class:`PretrainedError` naming the missing or mismatched parameters when
    the source is for another architecture.
    """
    from ..layers.transfer import init_from_static

    sd = resolve_state_dict(model, source)
    own = model.state_dict()
    label = "torchvision ImageNet weights" if source is True else str(source)

    # the stem: adapt RGB weights to in_chans
    first = next((k for k, v in own.items() if k.endswith("weight") and v.dim() >= 4), None)
    if first is not None and first in sd and sd[first].dim() == 4:
        want = own[first].shape[-3]
        if sd[first].shape[1] != want:
            sd[first] = _adapt_input_conv(sd[first], want)

    # the classifier: kept at its initialisation when the class count differs
    head = _classifier_name(model)
    skipped: set[str] = set()
    if head is not None:
        keys = [k for k in sd if k.startswith(head + ".")]
        theirs = next((sd[k] for k in keys if k.endswith("weight")), None)
        n_classes = getattr(model, "num_classes", None)
        if theirs is not None and n_classes is not None and theirs.shape[0] != n_classes:
            log.info("pretrained %s: classifier %s has %d outputs, the model %d: kept at its "
                     "initialisation", label, head, theirs.shape[0], n_classes)
            skipped = {k for k in own if k.startswith(head + ".")}
            for k in keys:
                sd.pop(k)

    done: set[str] = set(skipped)
    used: set[str] = set()
    for name in _dynamic_layers(model):
        prefix = name + "."
        mine = [k for k in own if k.startswith(prefix)]
        if not mine or set(mine) <= done:
            continue
        theirs = {k[len(prefix):]: sd[k] for k in sd if k.startswith(prefix)}
        # a static source (only weight and bias where the dynamic layer has more)
        if set(theirs) <= {"weight", "bias"} and "weight" in theirs and (
                set(theirs) != {k[len(prefix):] for k in mine}):
            init_from_static(model.get_submodule(name), theirs["weight"], theirs.get("bias"),
                             noise=noise)
            done.update(mine)
            used.update(prefix + k for k in theirs)
    # layers a static network does not have (the terminal placement's) keep their init
    new_layers = ("terminal.",) if not any(k.startswith("terminal.") for k in sd) else ()
    missing = [k for k in own if k not in done and k not in sd
               and not k.endswith("num_batches_tracked") and not k.startswith(new_layers)]
    unexpected = [k for k in sd if k not in used and k not in own]
    shapes = [k for k in own if k not in done and k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

        parts = [f"{len(missing)} missing ({show(missing)})"] if missing else []
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({show(unexpected)})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} with other shapes (e.g. {k}: weights "
                         f"{tuple(sd[k].shape)} vs model {tuple(own[k].shape)})")
        raise PretrainedError(f"pretrained {label} does not fit this model: "
                              + "; ".join(parts) + "; use weights of the same architecture")
    new = {k: (sd[k] if k not in done and k in sd else v) for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in new.items()})
    return model
