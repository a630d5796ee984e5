"""One factory that turns a conv-type name into a layer.

Model builders never import layer classes: they take a ``conv_type`` name (``"static"``,
``"a2d2c"``, ``"a2d2c+"``, ``"condconv"``, ``"dynamicconv"``, ``"dcd"``, ``"odconv"``)
and keyword arguments, and call :func:`create_conv2d`. Unknown names and unknown
arguments raise with the valid choices.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Sequence

from torch import nn

from .a2d2c import A2D2Conv2d
from .condconv import CondConv2d
from .dcd import DCDConv2d
from .dynamicconv import DynamicConv2d
from .odconv import ODConv2d

__all__ = ["create_conv2d", "get_conv_layer", "list_conv_layers", "register_conv_layer"]

_CONV_LAYERS: dict[str, Callable[..., nn.Module]] = {}


def register_conv_layer(name: str, builder: Callable[..., nn.Module]) -> None:
    """Register ``builder`` (a class or ``functools.partial``) under ``name``."""
    if name in _CONV_LAYERS:
        raise ValueError(f"conv layer {name!r} is already registered")
    _CONV_LAYERS[name] = builder


def list_conv_layers() -> list[str]:
    """Names accepted by :func:`create_conv2d`."""
    return sorted(_CONV_LAYERS)


def get_conv_layer(name: str) -> Callable[..., nn.Module]:
    """The class (or partial) registered under ``name``."""
    try:
        return _CONV_LAYERS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _CONV_LAYERS, n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown conv type {name!r}{hint} (valid: {', '.join(list_conv_layers())})"
        ) from None


def _accepted_kwargs(builder: Callable[..., nn.Module]) -> set[str]:
    target = builder.func if isinstance(builder, functools.partial) else builder
    params = inspect.signature(target).parameters
    fixed = set(builder.keywords) if isinstance(builder, functools.partial) else set()
    return {n for n, p in params.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in fixed}


def create_conv2d(
    conv_type: str,
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    bias: bool = True,
    **kwargs,
) -> nn.Module:
    """Build a convolution of type ``conv_type`` with ``nn.Conv2d`` arguments.

    Extra keyword arguments go to the layer (``num_kernels=4``, ``num_points=100``, ...);
    a misspelled or foreign one raises ``TypeError`` listing what the layer accepts,
    never silently builds something else.
    """
    builder = get_conv_layer(conv_type)
    accepted = _accepted_kwargs(builder)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        own = sorted(accepted - {"in_channels", "out_channels", "kernel_size", "stride",
                                 "padding", "dilation", "groups", "bias"})
        raise TypeError(
            f"conv type {conv_type!r} got unexpected argument(s) {unknown}; "
            f"it accepts {own}"
        )
    return builder(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                   bias, **kwargs)


register_conv_layer("static", nn.Conv2d)
# "a2d2c": the layer's own impl="auto" (the cheapest exact form for the shape, device and
# mode); "a2d2c+": the plus form always (the paper's A²D²C+). `impl=` overrides either.
register_conv_layer("a2d2c", A2D2Conv2d)
register_conv_layer("a2d2c+", functools.partial(A2D2Conv2d, impl="plus"))
register_conv_layer("condconv", CondConv2d)
register_conv_layer("dynamicconv", DynamicConv2d)
register_conv_layer("dcd", DCDConv2d)
register_conv_layer("odconv", ODConv2d)
