"""Object detection and instance segmentation: Mask R-CNN + FPN over registry backbones.

``create_maskrcnn("resnet50_a2d2c_plus", num_classes=81, pretrained="cls.pth")`` builds the
detector of the paper's Table 7; ``a2d2c detect train|eval|profile`` drive it on COCO.
"""

from .backbone import (
    TABLE7_BACKBONES,
    backbone_with_fpn,
    create_backbone_body,
    default_placement,
    freeze_batchnorm,
    freeze_stages,
    load_classification_checkpoint,
    read_state_dict,
)
from .coco_eval import STAT_NAMES, coco_evaluate, format_stats, to_coco_results
from .config import DetectionConfig, load_config
from .data import CocoInstances, GroupedBatchSampler
from .engine import (
    build_detection_schedule,
    build_detector,
    evaluate,
    load_detector_checkpoint,
    run_eval,
    run_train,
    train_one_epoch,
)
from .model import MASKRCNN_OPTIONS, create_maskrcnn
from .synthetic import make_shapes_dataset

__all__ = [
    "MASKRCNN_OPTIONS",
    "STAT_NAMES",
    "TABLE7_BACKBONES",
    "CocoInstances",
    "DetectionConfig",
    "GroupedBatchSampler",
    "backbone_with_fpn",
    "build_detection_schedule",
    "build_detector",
    "coco_evaluate",
    "create_backbone_body",
    "create_maskrcnn",
    "default_placement",
    "evaluate",
    "format_stats",
    "freeze_batchnorm",
    "freeze_stages",
    "load_classification_checkpoint",
    "load_config",
    "load_detector_checkpoint",
    "make_shapes_dataset",
    "read_state_dict",
    "run_eval",
    "run_train",
    "to_coco_results",
    "train_one_epoch",
]
