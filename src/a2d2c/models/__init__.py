"""The model zoo: backbones with injectable convolutions, a registry, timm bridge.

>>> import a2d2c
>>> model = a2d2c.create_model("resnet18_a2d2c", num_classes=10, in_chans=1, stem="cifar",
...                            width_mult=0.25)
>>> a2d2c.list_models("resnet18_*")[:3]
['resnet18_a2d2c', 'resnet18_a2d2c_plus', 'resnet18_condconv']
"""

from . import (
    internimage,  # noqa: F401  (registers internimage_*, flash_internimage_*)
    transformers,  # noqa: F401  (registers vit_small, swin_tiny)
)
from ._placement import BASELINE_PLACEMENTS, PLACEMENTS, ConvMaker, ConvSite
from ._registry import (
    create_model,
    get_model_entrypoint,
    list_models,
    model_arguments,
    register_builder,
    register_model,
)
from ._timm import timm_name
from .mobilenetv2 import InvertedResidual, MobileNetV2
from .resnet import BasicBlock, Bottleneck, ResNet

__all__ = [
    "BASELINE_PLACEMENTS",
    "PLACEMENTS",
    "BasicBlock",
    "Bottleneck",
    "ConvMaker",
    "ConvSite",
    "InvertedResidual",
    "MobileNetV2",
    "ResNet",
    "create_model",
    "get_model_entrypoint",
    "list_models",
    "model_arguments",
    "register_builder",
    "register_model",
    "timm_name",
]
