"""Dynamic convolution layers sharing one ``nn.Conv2d``-shaped contract."""

from ._base import ConvArgs, TemperatureMixin
from .a2d2c import A2D2Conv2d
from .condconv import CondConv2d
from .dcd import DCDConv2d, DCDLinear
from .dcn import DCNv3, DCNv4
from .dynamicconv import DynamicConv2d
from .factory import create_conv2d, get_conv_layer, list_conv_layers, register_conv_layer
from .odconv import ODConv2d

__all__ = [
    "A2D2Conv2d",
    "CondConv2d",
    "ConvArgs",
    "DCDConv2d",
    "DCDLinear",
    "DCNv3",
    "DCNv4",
    "DynamicConv2d",
    "ODConv2d",
    "TemperatureMixin",
    "create_conv2d",
    "get_conv_layer",
    "list_conv_layers",
    "register_conv_layer",
]
