"""Mask R-CNN + FPN (torchvision's ``MaskRCNN``) over a registry backbone."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from .backbone import backbone_with_fpn, create_backbone_body, load_classification_checkpoint

__all__ = ["MASKRCNN_OPTIONS", "create_maskrcnn"]

# MaskRCNN's own keyword arguments (thresholds, sampler sizes, ...) a config may set;
# anything else is an error rather than being swallowed by MaskRCNN's **kwargs.
MASKRCNN_OPTIONS: tuple[str, ...] = tuple(
    p for p in inspect.signature(MaskRCNN.__init__).parameters
    if p not in ("self", "backbone", "num_classes", "kwargs")
    and not p.endswith(("_head", "_predictor", "_pool", "_generator"))
)


def create_maskrcnn(
    backbone: str,
    *,
    num_classes: int,
    pretrained: str | Path | None = None,
    placement: str | Callable[[str], bool] | None = "auto",
    num_kernels: int | None = None,
    conv_kwargs: Mapping[str, Any] | None = None,
    width_mult: float | None = None,
    variant: str | None = None,
    frozen_bn: bool = True,
    trainable_layers: int = 3,
    fpn_channels: int = 256,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_sizes: tuple[int, ...] | None = None,
    box_head_dim: int = 1024,
    mask_head_dim: int = 256,
    detector_kwargs: Mapping[str, Any] | None = None,
) -> MaskRCNN:
    """Mask R-CNN with FPN over the registry backbone ``backbone`` (the standard 1x recipe).

    Args:
        backbone: registry name, e.g. one of :data:`a2d2c.detection.TABLE7_BACKBONES`.
        num_classes: object classes *including* background (COCO: 81).
        pretrained: classification checkpoint of the same backbone to initialise from
            (:func:`load_classification_checkpoint`); ``None`` starts from scratch.
        placement, num_kernels, conv_kwargs, width_mult, variant, frozen_bn: see
            :func:`create_backbone_body`.
        trainable_layers: stages trained, counted from the last (3: layer2–4, the 1x recipe).
        fpn_channels: FPN width (256 in the paper's setting).
        min_size, max_size: test/train resize of :class:`GeneralizedRCNNTransform`
            (800/1333 for COCO).
        anchor_sizes: one anchor size per FPN level (P2–P6), aspect ratios 0.5, 1, 2;
            ``None`` keeps torchvision's (32, 64, 128, 256, 512).
        box_head_dim, mask_head_dim: widths of the box head (two FC layers) and of the
            mask head (four 3×3 convs + deconv); 1024 and 256 are the standard heads.
        detector_kwargs: further ``MaskRCNN`` options by name (:data:`MASKRCNN_OPTIONS`,
            e.g. ``rpn_batch_size_per_image``); unknown names raise ``ValueError``.

    With ``frozen_bn`` (the default) all norms of the backbone are frozen
    (``FrozenBatchNorm2d``); the FPN and heads have no BatchNorm, so every part trains
    with one image per GPU. ``frozen_bn=False`` keeps trainable BatchNorm, for training
    from scratch (frozen identity statistics would leave a deep network unnormalised).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 (background included), got "
                         f"{num_classes!r}")
    extra = dict(detector_kwargs or {})
    unknown = sorted(set(extra) - set(MASKRCNN_OPTIONS))
    if unknown:
        raise ValueError(f"unknown detector_kwargs {unknown}; allowed: {list(MASKRCNN_OPTIONS)}")
    body = create_backbone_body(backbone, placement=placement, num_kernels=num_kernels,
                                conv_kwargs=conv_kwargs, width_mult=width_mult,
                                variant=variant, frozen_bn=frozen_bn)
    if pretrained is not None:
        load_classification_checkpoint(body, pretrained, model_name=backbone)
    fpn = backbone_with_fpn(body, trainable_layers=trainable_layers, out_channels=fpn_channels)
    if anchor_sizes is not None:
        if len(anchor_sizes) != 5 or any(int(s) < 1 for s in anchor_sizes):
            raise ValueError(f"anchor_sizes must be 5 positive sizes (P2-P6), got {anchor_sizes!r}")
        extra["rpn_anchor_generator"] = AnchorGenerator(
            tuple((int(s),) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
    for name, dim in (("box_head_dim", box_head_dim), ("mask_head_dim", mask_head_dim)):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"{name} must be an int >= 1, got {dim!r}")
    # The heads torchvision builds by default, with their widths as arguments.
    resolution = 7  # the box RoIAlign output size
    model = MaskRCNN(
        fpn, num_classes=None, min_size=min_size, max_size=max_size,
        box_head=TwoMLPHead(fpn_channels * resolution**2, box_head_dim),
        box_predictor=FastRCNNPredictor(box_head_dim, num_classes),
        mask_head=MaskRCNNHeads(fpn_channels, (mask_head_dim,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(mask_head_dim, mask_head_dim, num_classes),
        **extra,
    )
    return model


def backbone_body(model: nn.Module) -> nn.Module:
    """The classification network inside a detector built by :func:`create_maskrcnn`."""
    return model.backbone.body
