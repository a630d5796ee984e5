"""a2d2c: Adaptive Attention-Driven Dynamic Convolution for PyTorch.

>>> import torch, a2d2c
>>> conv = a2d2c.A2D2Conv2d(16, 32, 3, padding=1, num_kernels=4, num_points=100)
>>> conv(torch.randn(2, 16, 8, 8)).shape
torch.Size([2, 32, 8, 8])
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from . import logs as _logs  # noqa: F401  (the "a2d2c" logger, quiet as a library)
from .convert import PLACEMENTS, convert
from .layers import (
    A2D2Conv2d,
    CondConv2d,
    DCDConv2d,
    DCDLinear,
    DCNv3,
    DCNv4,
    DynamicConv2d,
    ODConv2d,
    TemperatureMixin,
    create_conv2d,
    get_conv_layer,
    list_conv_layers,
    register_conv_layer,
)
from .models import create_model, list_models, register_model
from .temperature import TemperatureScheduler, get_temperature, set_temperature

__version__ = "0.1.0"  # the package version (pyproject.toml reads it from here)


if TYPE_CHECKING:
    import torch


def load_model(checkpoint: str | os.PathLike) -> torch.nn.Module:
    """A trained model rebuilt from its checkpoint alone (``a2d2c.engine.load_model``)."""
    from .engine import load_model as _load

    return _load(checkpoint)


__all__ = [
    "PLACEMENTS",
    "A2D2Conv2d",
    "CondConv2d",
    "DCDConv2d",
    "DCDLinear",
    "DCNv3",
    "DCNv4",
    "DynamicConv2d",
    "ODConv2d",
    "TemperatureMixin",
    "TemperatureScheduler",
    "__version__",
    "convert",
    "create_conv2d",
    "create_model",
    "get_conv_layer",
    "get_temperature",
    "list_conv_layers",
    "list_models",
    "load_model",
    "register_conv_layer",
    "register_model",
    "set_temperature",
]
