"""The contract shared by every dynamic convolution in this package.

Every layer takes the arguments of :class:`torch.nn.Conv2d` first, then its own
keyword-only arguments, then ``device``/``dtype``. Validation lives here, once, so that
all layers reject bad input with the same messages.

Layers with a softmax temperature derive from :class:`TemperatureMixin`; the
temperature is a registered buffer (it follows ``.to()``, is saved in ``state_dict``
and is found by *type*, never by ``hasattr``), see :func:`a2d2c.set_temperature`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ConvArgs",
    "TemperatureMixin",
    "check_choice",
    "check_conv_input",
    "check_input_dtype",
    "check_positive_int",
]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, Sequence) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return (int(value[0]), int(value[1]))
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


class ConvArgs:
    """The validated geometry of a 2-d convolution (the ``nn.Conv2d`` arguments)."""

    __slots__ = (
        "dilation",
        "groups",
        "in_channels",
        "kernel_size",
        "out_channels",
        "padding",
        "padding_mode",
        "stride",
    )

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
    ) -> None:
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("groups", groups)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if in_channels % groups:
            raise ValueError(
                f"in_channels must be divisible by groups, got in_channels={in_channels}, "
                f"groups={groups}"
            )
        if out_channels % groups:
            raise ValueError(
                f"out_channels must be divisible by groups, got out_channels={out_channels}, "
                f"groups={groups}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.groups = groups
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        for name, pair, low in (("kernel_size", self.kernel_size, 1), ("stride", self.stride, 1),
                                ("dilation", self.dilation, 1)):
            if min(pair) < low:
                raise ValueError(f"{name} must be >= {low}, got {pair}")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(
                f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}"
            )
        self.padding_mode = padding_mode
        if isinstance(padding, str):
            if padding == "valid":
                padding = 0
            elif padding == "same":
                if self.stride != (1, 1):
                    raise ValueError("padding='same' is not supported for strided convolutions")
                total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size, strict=True)]
                if any(t % 2 for t in total):
                    raise ValueError(
                        "padding='same' needs an odd effective kernel size "
                        f"(dilation*(kernel_size-1) even), got kernel_size={self.kernel_size}, "
                        f"dilation={self.dilation}; pass explicit padding instead"
                    )
                padding = (total[0] // 2, total[1] // 2)
            else:
                raise ValueError(
                    f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}"
                )
        self.padding = _pair(padding, "padding")
        if min(self.padding) < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the output for an input of ``height × width``."""
        out = []
        for size, k, s, p, d in zip((height, width), self.kernel_size, self.stride, self.padding,
                                    self.dilation, strict=True):
            out.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
        return out[0], out[1]

    def pad_input(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Apply a non-``zeros`` padding mode explicitly.

        Returns the (maybe padded) input and the padding the convolution itself must
        still apply: ``(0, 0)`` after explicit padding, ``self.padding`` otherwise.
        """
        if self.padding_mode == "zeros" or self.padding == (0, 0):
            return x, self.padding
        ph, pw = self.padding
        return F.pad(x, (pw, pw, ph, ph), mode=self.padding_mode), (0, 0)


def check_input_dtype(x: Tensor, param_dtype: torch.dtype | None, layer: str) -> None:
    """Reject the dtypes ``nn.Conv2d`` rejects, as a ``TypeError`` that says what to do.

    Integer, bool and complex inputs are refused (the layers' attention would silently
    truncate them: an int64 input gave an int64 output of zeros). A floating input of
    another dtype than the parameters is refused outside autocast, as ``nn.Conv2d``
    refuses it, except that here it is one clear message for every layer and ``impl``.
    Under autocast for the input's device any floating dtype is accepted.
    """
    if not x.dtype.is_floating_point:
        kind = "a complex" if x.dtype.is_complex else "an integer or bool"
        raise TypeError(
            f"{layer} expects a floating-point input (like nn.Conv2d), got {kind} tensor "
            f"of dtype {x.dtype}; convert it with x.float()")
    if (param_dtype is not None and x.dtype != param_dtype
            and not torch.is_autocast_enabled(x.device.type)):
        raise TypeError(
            f"{layer} has {param_dtype} parameters but got a {x.dtype} input; convert the "
            f"input (x.to({param_dtype})) or the layer (layer.to({x.dtype})), or run under "
            "torch.autocast")


def check_conv_input(x: Tensor, geometry: ConvArgs, layer: str,
                     param_dtype: torch.dtype | None = None) -> None:
    """Reject inputs that ``nn.Conv2d`` would reject, with a message that says why.

    A batch of size 0 passes (``nn.Conv2d`` returns an empty output for it); see
    ``DynamicConvBase._empty_forward``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer} expects a torch.Tensor input, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{layer} expects a 4-d input (batch, channels, height, width), got a "
            f"{x.dim()}-d tensor of shape {tuple(x.shape)}; add a batch dimension with "
            "x.unsqueeze(0) for a single image"
        )
    check_input_dtype(x, param_dtype, layer)
    if x.shape[1] != geometry.in_channels:
        raise ValueError(
            f"{layer} expects {geometry.in_channels} input channels, got input of shape "
            f"{tuple(x.shape)} with {x.shape[1]} channels"
        )
    for axis, size, k, p, d in zip(("height", "width"), x.shape[2:], geometry.kernel_size,
                                   geometry.padding, geometry.dilation, strict=True):
        effective = d * (k - 1) + 1
        if size + 2 * p < effective:
            raise ValueError(
                f"{layer}: input {axis} {size} (+ padding {2 * p}) is smaller than the "
                f"effective kernel size {effective}; use a larger input or more padding"
            )


class TemperatureMixin(nn.Module):
    """A module whose attention softmax is divided by a temperature ``τ``.

    ``τ`` is a 0-d float32 buffer named ``temperature``; change it with
    :meth:`set_temperature` or, model-wide, :func:`a2d2c.set_temperature` /
    :class:`a2d2c.TemperatureScheduler`.
    """

    temperature: Tensor

    def _init_temperature(self, value: float, device: torch.device | str | None) -> None:
        _check_temperature(value)
        self.register_buffer(
            "temperature", torch.tensor(float(value), dtype=torch.float32, device=device)
        )

    def set_temperature(self, value: float) -> None:
        _check_temperature(value)
        self.temperature.fill_(float(value))


def _check_temperature(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"temperature must be a number, got {value!r}")
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {value}")


def check_positive_int(value: int, name: str, symbol: str | None = None) -> int:
    """Validate a count argument such as ``num_kernels``."""
    label = f"{name} ({symbol})" if symbol else name
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{label} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{label} must be >= 1, got {value}")
    return value


def check_choice(value: str, name: str, choices: Sequence[str]) -> str:
    """Validate a name argument against its allowed set."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value
