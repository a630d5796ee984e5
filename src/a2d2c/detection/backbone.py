"""Registry backbones for detection: frozen norms, frozen early stages, FPN, checkpoints.

The detector never defines a backbone of its own: :func:`create_backbone_body` asks the
model registry (:func:`a2d2c.create_model`) for the *classification* network of the
given name, with every BatchNorm built as :class:`torchvision.ops.FrozenBatchNorm2d`,
and :func:`backbone_with_fpn` wraps its stages in torchvision's
:class:`~torchvision.models.detection.backbone_utils.BackboneWithFPN`.

Placement of A²D²C+ in the detector. The paper puts A²D²C+ "at three points" of the
detection backbone without naming them; we read this as the three stages the 1x
recipe fine-tunes (stages 2–4, ``layer2``–``layer4``) and replace the 3×3 conv of every
bottleneck there (``layer{2,3,4}.*.conv2``, 13 convs in ResNet-50): the registry's
placement ``"stages2-4-3x3"`` (every 3×3 block conv of stages 2–4), so a classification
backbone for it is trained with ``model.kwargs: {placement: stages2-4-3x3}``. Stage 1
is frozen by the recipe, so a dynamic layer there would never learn. The baselines
(CondConv, DynamicConv, DCD, ODConv) keep their own papers' placements (the registry's
default for their names).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

__all__ = [
    "TABLE7_BACKBONES",
    "backbone_with_fpn",
    "create_backbone_body",
    "default_placement",
    "freeze_batchnorm",
    "freeze_stages",
    "load_classification_checkpoint",
    "read_state_dict",
]

#: The backbones of the paper's Table 7 (Mask R-CNN + FPN on COCO 2017).
TABLE7_BACKBONES: tuple[str, ...] = (
    "resnet50",
    "resnet50_condconv",
    "resnet50_dynamicconv",
    "resnet50_dcd",
    "resnet50_odconv",
    "resnet50_a2d2c_plus",
)

# The stages a ResNet body consists of, earliest first (torchvision's attribute names);
# ``trainable_layers=k`` trains the last k of them, as torchvision's resnet_fpn_backbone.
_RESNET_STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")


def default_placement(backbone: str) -> str | None:
    """The placement used when a config says ``placement: auto``.

    A²D²C / A²D²C+ backbones get ``"stages2-4-3x3"`` (see the module docstring); every
    other name keeps the registry's default (``None``: no override).
    """
    return "stages2-4-3x3" if "a2d2c" in backbone else None


def _create_model(name: str, **kwargs: Any) -> nn.Module:
    """The one door to the model registry: detection never builds a backbone itself."""
    from ..models import create_model

    return create_model(name, **kwargs)


def create_backbone_body(
    name: str,
    *,
    placement: str | Callable[[str], bool] | None = "auto",
    num_kernels: int | None = None,
    conv_kwargs: Mapping[str, Any] | None = None,
    width_mult: float | None = None,
    variant: str | None = None,
    frozen_bn: bool = True,
) -> nn.Module:
    """The registry's classification network ``name``, ready to become a detection body.

    Args:
        name: a registry name (``a2d2c.list_models()``), e.g. ``"resnet50_a2d2c_plus"``.
        placement: ``"auto"`` (:func:`default_placement`), ``None`` (the registry's
            default for ``name``), a registry placement name (SPEC §3 and
            ``"stages2-4-3x3"``), or a predicate on the qualified conv name.
        num_kernels, conv_kwargs, width_mult, variant: registry overrides, passed only
            when set.
        frozen_bn: build every norm as ``FrozenBatchNorm2d`` (the 1x recipe; it also makes
            training with 1–2 images per GPU well defined). Any BatchNorm a dynamic layer
            carries inside its attention is frozen as well (:func:`freeze_batchnorm`).

    The classifier (``fc``) is kept so that classification checkpoints load strictly;
    :func:`backbone_with_fpn` drops it.
    """
    if placement == "auto":
        placement = default_placement(name)
    overrides: dict[str, Any] = {}
    if placement is not None:
        overrides["placement"] = placement
    if num_kernels is not None:
        overrides["num_kernels"] = num_kernels
    if conv_kwargs:
        overrides["conv_kwargs"] = dict(conv_kwargs)
    if width_mult is not None:
        overrides["width_mult"] = width_mult
    if variant is not None:
        overrides["variant"] = variant
    if frozen_bn:
        overrides["norm_layer"] = FrozenBatchNorm2d
    # the classifier is not part of the detector: a plain one, whatever the placement's
    # default (DCD's dynamic classifier has BatchNorm1d, which cannot be frozen)
    overrides["classifier"] = "linear"
    model = _create_model(name, **overrides)
    missing = [s for s in _RESNET_STAGES if not hasattr(model, s)]
    if missing:
        raise ValueError(
            f"backbone {name!r} is not a ResNet-style network (no {missing}); detection "
            f"supports registry networks with the stages {list(_RESNET_STAGES)}"
        )
    if frozen_bn:
        freeze_batchnorm(model)
    return model


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` under ``module`` by ``FrozenBatchNorm2d`` (in place).

    Statistics and affine parameters are copied, so the function is unchanged in eval
    mode. Detection fine-tunes with 1–2 images per GPU, where batch statistics are
    useless (and undefined on 1×1 attention descriptors), hence the standard recipe
    freezes them.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                if child.affine:
                    frozen.weight.copy_(child.weight)
                    frozen.bias.copy_(child.bias)
                if child.track_running_stats and child.running_mean is not None:
                    frozen.running_mean.copy_(child.running_mean)
                    frozen.running_var.copy_(child.running_var)
            frozen.to(device=child.weight.device if child.affine else None)
            setattr(module, name, frozen)
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            raise TypeError(
                f"cannot freeze {type(child).__name__} at {name!r}: only BatchNorm2d has a "
                "frozen counterpart; build the backbone without it"
            )
        else:
            freeze_batchnorm(child)
    return module


def freeze_stages(body: nn.Module, trainable_layers: int) -> None:
    """Freeze all but the last ``trainable_layers`` of (conv1, layer1..layer4), like torchvision.

    ``trainable_layers=3`` (the standard 1x recipe) trains layer2–layer4 and freezes the
    stem and layer1; 5 trains everything, 0 nothing. The classifier is not touched.
    """
    if isinstance(trainable_layers, bool) or not isinstance(trainable_layers, int) or not (
        0 <= trainable_layers <= 5
    ):
        raise ValueError(f"trainable_layers must be an int in [0, 5], got {trainable_layers!r}")
    trained = _RESNET_STAGES[len(_RESNET_STAGES) - trainable_layers:]
    if trainable_layers == 5:
        trained = (*trained, "bn1")
    for pname, param in body.named_parameters():
        stage = pname.split(".", 1)[0]
        if stage in ("fc", "avgpool"):
            continue
        if stage not in trained:
            param.requires_grad_(False)


def _feature_channels(body: nn.Module, stages: list[str]) -> list[int]:
    """Output channels of the given stages, found by one small forward pass."""
    param = next(body.parameters())
    in_chans = next(m for m in body.modules() if hasattr(m, "in_channels")).in_channels
    x = torch.zeros(1, in_chans, 64, 64, device=param.device, dtype=param.dtype)
    channels: dict[str, int] = {}
    was_training = body.training
    body.eval()
    try:
        with torch.no_grad():
            for name, child in body.named_children():
                if name in ("avgpool", "fc"):
                    break
                x = child(x)
                if name in stages:
                    channels[name] = x.shape[1]
    finally:
        body.train(was_training)
    return [channels[s] for s in stages]


def backbone_with_fpn(
    body: nn.Module,
    *,
    trainable_layers: int = 3,
    out_channels: int = 256,
    returned_layers: tuple[int, ...] = (1, 2, 3, 4),
) -> BackboneWithFPN:
    """Wrap a ResNet-style classification network as torchvision's ``BackboneWithFPN``.

    Freezes the early stages (:func:`freeze_stages`), returns ``layer{returned_layers}``
    to an FPN with ``out_channels`` channels and a max-pooled extra level (P2–P6, the
    Mask R-CNN FPN). ``avgpool`` and ``fc`` are not part of the result.
    """
    if not returned_layers or any(i not in (1, 2, 3, 4) for i in returned_layers):
        raise ValueError(f"returned_layers must be a non-empty subset of (1, 2, 3, 4), got "
                         f"{returned_layers!r}")
    freeze_stages(body, trainable_layers)
    stages = [f"layer{i}" for i in returned_layers]
    in_channels_list = _feature_channels(body, stages)
    return_layers = {stage: str(i) for i, stage in enumerate(stages)}
    return BackboneWithFPN(body, return_layers, in_channels_list, out_channels,
                           extra_blocks=LastLevelMaxPool())


# ----------------------------------------------------------------------------- checkpoints

_PREFIXES = ("module.", "_orig_mod.")


def _read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state_dict, metadata)`` of a checkpoint file (``engine.checkpoint.read_weights``)."""
    from ..engine.checkpoint import CheckpointError, read_weights

    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        return read_weights(path)
    except CheckpointError as e:
        raise ValueError(str(e)) from None


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read the model weights of a checkpoint file.

    Accepts the training engine's format (a dict whose ``"model"`` entry is the
    state_dict; ``"state_dict"`` is accepted too), a plain state_dict saved with
    ``torch.save``, and ``.safetensors`` files. ``module.`` (DDP) and ``_orig_mod.``
    (``torch.compile``) prefixes are removed.
    """
    return _read_checkpoint(path)[0]


def _examples(items: list[str], n: int = 5) -> str:
    more = f", ... ({len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_classification_checkpoint(
    body: nn.Module, path: str | Path, *, model_name: str | None = None,
    classifier: str = "fc",
) -> dict[str, list[str]]:
    """Initialise ``body`` (a registry classification network) from a classification checkpoint.

    Everything except the classifier (keys under ``classifier.``, of any number of
    classes) must match by name and shape; otherwise a ``ValueError`` lists the missing
    keys, the unexpected ones and the shape mismatches, which is what loading a
    checkpoint of another architecture (e.g. a static ResNet-50 into
    ``resnet50_a2d2c_plus``, or one trained with another placement or K) looks like.
    BatchNorm's ``num_batches_tracked`` is ignored (the detector's norms are frozen).
    Temperature buffers are loaded like any other: a finished classification schedule
    leaves ``τ = 1``.

    With ``model_name`` (the registry name ``body`` was built from), a checkpoint that
    records another ``model_name`` (the engine's checkpoints do) is refused up front.

    Returns ``{"loaded": [...], "ignored": [...]}`` (the ignored classifier keys).
    """
    state, meta = _read_checkpoint(path)
    name = meta.get("model_name")
    if model_name is not None and isinstance(name, str) and name != model_name:
        raise ValueError(
            f"checkpoint {str(path)!r} holds weights of model {name!r}, but the detector's "
            f"backbone is {model_name!r}; use a classification checkpoint of {model_name!r}"
        )
    from ..engine.checkpoint import compare_state

    own = body.state_dict()
    cls_prefix = classifier + "."
    ignored = [k for k in state if k.startswith(cls_prefix)]
    state = {k: v for k, v in state.items() if not k.startswith(cls_prefix)}
    expected = {k: v for k, v in own.items() if not k.startswith(cls_prefix)}
    state = {k: v for k, v in state.items()
             if not (k.endswith("num_batches_tracked") and k not in expected)}
    diff = compare_state(expected, state)
    missing, unexpected = diff.missing, diff.unexpected
    mismatched = [f"{k}: checkpoint {theirs} vs model {mine}" for k, theirs, mine in diff.shapes]
    if not diff.ok:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches ({_examples(mismatched)})")
        if missing:
            parts.append(f"{len(missing)} keys missing from the checkpoint ({_examples(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
        raise ValueError(
            f"checkpoint {str(path)!r} does not match "
            f"{'backbone ' + repr(model_name) if model_name else 'the backbone'}: "
            + "; ".join(parts) +
            ". Use a classification checkpoint of the same registry name, placement, "
            "num_kernels and conv_kwargs as the detection config's backbone."
        )
    result = body.load_state_dict(state, strict=False)
    leftover = [k for k in result.missing_keys if not k.startswith(cls_prefix)]
    if leftover or result.unexpected_keys:  # pragma: no cover - guarded by the checks above
        raise RuntimeError(f"unexpected load result: {result}")
    return {"loaded": sorted(state), "ignored": ignored}
