"""Dynamic convolution layers sharing one ``nn.Conv2d``-shaped contract."""

from ._base import ConvArgs, TemperatureMixin
from .a2d2c import A2D2Conv2d
from .factory import create_conv2d, get_conv_layer, list_conv_layers, register_conv_layer

__all__ = [
    "A2D2Conv2d",
    "ConvArgs",
    "TemperatureMixin",
    "create_conv2d",
    "get_conv_layer",
    "list_conv_layers",
    "register_conv_layer",
]
