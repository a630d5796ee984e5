"""Parameters and MAdds of a detector, Table 7's columns: whole detector and backbone.

The backbone figure ("pre-trained backbone models excluding the last fully connected
layer") is the registry network's stem and four stages (``model.backbone.body``), the
detector figure everything (backbone, FPN, RPN, box and mask heads).

MAdds are counted by the project's profiler (:func:`a2d2c.profiling.count_madds`: one
eval-mode forward pass under ``FlopCounterMode``, convolutions and matrix products plus
the dynamic layers' kernel aggregation), for the path actually executed (SPEC §4): a
dynamic layer costs what its implementation runs (``impl="plus"``, the A²D²C+ default:
K convolutions; the kernel form: one convolution plus attention and aggregation, the
paper's convention). RoIAlign, NMS and element-wise operations are not counted. The
input is resized and padded by the detector's own transform first (an 800×1280 image
stays 800×1280 under the COCO settings, the size mmdetection reports FLOPs at). The
heads are counted for a fixed workload, so that the figure does not depend on the
(random) weights: all ``rpn_post_nms_top_n_test`` proposals (1000) through the box head
(RPN and box NMS disabled for the count) and ``detections`` RoIs through the mask head.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.ops import FrozenBatchNorm2d

from ..profiling import count_madds, count_params

__all__ = ["DetectorCost", "count_detector", "detector_params"]


@dataclass
class DetectorCost:
    """Parameters and multiply-adds, whole detector and backbone (body without classifier)."""

    params: int
    madds: int
    backbone_params: int
    backbone_madds: int
    image_size: tuple[int, int]
    proposals: int
    detections: int
    dynamic_layers: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        h, w = self.image_size
        return (f"params {self.params / 1e6:.2f}M ({self.backbone_params / 1e6:.2f}M)  "
                f"MAdds {self.madds / 1e9:.2f}G ({self.backbone_madds / 1e9:.2f}G)  "
                f"[detector (backbone); {h}x{w} input, {self.proposals} proposals, "
                f"{self.detections} masks; {self.dynamic_layers}]")


def _num_params(module: nn.Module) -> int:
    """Parameters, counting a frozen norm's scale and shift (buffers there) as parameters."""
    frozen = sum(m.weight.numel() + m.bias.numel() for m in module.modules()
                 if isinstance(m, FrozenBatchNorm2d))
    return count_params(module) + frozen


def detector_params(model: MaskRCNN) -> tuple[int, int]:
    """``(whole detector, backbone body)`` parameter counts, Table 7's Params column."""
    return _num_params(model), _num_params(model.backbone.body)


class _ImageToDetector(nn.Module):
    """Feeds a ``(1, C, H, W)`` batch to a detector as its list of images."""

    def __init__(self, detector: MaskRCNN) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> Any:
        return self.detector(list(x))


@contextmanager
def _fixed_workload(model: MaskRCNN, detections: int):
    rpn, roi = model.rpn, model.roi_heads
    saved = (rpn.nms_thresh, rpn.score_thresh, roi.score_thresh, roi.nms_thresh,
             roi.detections_per_img)
    rpn.nms_thresh, rpn.score_thresh = 1.0, 0.0
    roi.score_thresh, roi.nms_thresh, roi.detections_per_img = -1.0, 1.0, detections
    try:
        yield
    finally:
        (rpn.nms_thresh, rpn.score_thresh, roi.score_thresh, roi.nms_thresh,
         roi.detections_per_img) = saved


def count_detector(model: MaskRCNN, *, image_size: tuple[int, int] = (800, 1280),
                   detections: int = 100) -> DetectorCost:
    """Count ``model``'s parameters and MAdds for one ``image_size`` (H, W) image.

    ``model`` is a torchvision ``MaskRCNN`` (e.g. from :func:`create_maskrcnn`); it is
    run once in eval mode on a random image and restored to its previous mode.
    """
    if not isinstance(model, MaskRCNN):
        raise TypeError(f"model must be a torchvision MaskRCNN, got {type(model).__name__}")
    h, w = image_size
    if h < 32 or w < 32:
        raise ValueError(f"image_size must be at least 32x32, got {image_size}")
    param = next(model.parameters())
    body: nn.Module = model.backbone.body
    was_training = model.training
    model.eval()
    rois: dict[str, int] = {}

    def _count(name: str):
        def hook(_module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            rois[name] = int(output.shape[0])
        return hook

    handles = [model.roi_heads.box_roi_pool.register_forward_hook(_count("box")),
               model.roi_heads.mask_roi_pool.register_forward_hook(_count("mask"))]
    try:
        image = torch.zeros(3, h, w, device=param.device, dtype=param.dtype)
        with torch.no_grad():
            batch, _ = model.transform([image])
        size = (int(batch.tensors.shape[-2]), int(batch.tensors.shape[-1]))
        backbone = count_madds(body, (3, *size))
        with _fixed_workload(model, detections):
            whole = count_madds(_ImageToDetector(model), (3, h, w))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    params, backbone_params = detector_params(model)
    return DetectorCost(
        params=params,
        madds=whole.madds,
        backbone_params=backbone_params,
        backbone_madds=backbone.madds,
        image_size=size,
        proposals=rois.get("box", 0),
        detections=rois.get("mask", 0),
        dynamic_layers=backbone.summary(),
    )
