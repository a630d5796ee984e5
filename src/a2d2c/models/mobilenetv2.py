"""MobileNetV2 (Sandler et al. 2018) with the convolution injected.

Module names are torchvision's (``features.{i}``, inverted residuals with a ``conv``
sequential, ``classifier = [Dropout, Linear]``), so torchvision's ``mobilenet_v2``
``state_dict`` loads into the static models. Widths follow torchvision: every width is
``_make_divisible(c · width_mult, 8)``, and the last 1×1 conv keeps 1280 channels for
``width_mult < 1``.

``stem="cifar"`` is the usual CIFAR variant: the stem conv has stride 1 and the second
stage (24 channels) stride 1, so a 32×32 input ends at 4×4 instead of 1×1.

The conv sites: ``features.0.0`` (stem, role ``stem``), every conv inside an inverted
residual (role ``block``: the 1×1 expansion, the 3×3 depthwise, the 1×1 projection) and
``features.18.0`` (the last 1×1, role ``head``). ODConv's placement (its
``od_mobilenetv2.py``, 4.44M / 7.50M / 11.51M) is every conv but the stem, which is also
what ``"all"`` means here (SPEC §3).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._placement import ConvMaker, ConvSite, PlacementArg, TerminalLayer, backbone_modules
from ._registry import register_builder, register_model
from .resnet import NormLayer, _check_common

__all__ = ["InvertedResidual", "MobileNetV2"]

STEMS = ("imagenet", "cifar")
# t (expansion), c (channels), n (blocks), s (stride of the first block)
_SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
            [6, 160, 3, 2], [6, 320, 1, 1]]


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round to a multiple of ``divisor``, never more than 10% below ``v`` (torchvision)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _conv_norm_act(make: ConvMaker, site: ConvSite, cin: int, cout: int, kernel_size: int,
                   stride: int, groups: int, norm_layer: NormLayer) -> nn.Sequential:
    conv = make(site, cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups)
    return nn.Sequential(conv, norm_layer(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """1×1 expansion (skipped when ``t = 1``), 3×3 depthwise, linear 1×1 projection."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int,
                 norm_layer: NormLayer, make: ConvMaker, prefix: str) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2 instead of {stride}")
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        i = 0
        if expand_ratio != 1:
            layers.append(_conv_norm_act(
                make, ConvSite(f"{prefix}.conv.0.0", "block", 1, 1, True),
                inp, hidden, 1, 1, 1, norm_layer))
            i = 1
        layers.append(_conv_norm_act(
            make, ConvSite(f"{prefix}.conv.{i}.0", "block", 3, hidden, i == 0),
            hidden, hidden, 3, stride, hidden, norm_layer))
        layers.append(make(ConvSite(f"{prefix}.conv.{i + 1}", "block", 1), hidden, oup, 1))
        layers.append(norm_layer(oup))
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 with injectable convolutions.

    Args:
        num_classes: classifier outputs (``0``: pooled features).
        in_chans: input channels.
        make: the conv maker (conv type, K, placement).
        width_mult: the width multiplier (0.5, 0.75, 1.0 in the paper).
        stem: ``"imagenet"`` or ``"cifar"`` (stride 1 in the stem and the second stage).
        norm_layer: normalisation constructor, default ``nn.BatchNorm2d``.
        drop_rate: dropout before the classifier (torchvision: 0.2).
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, make: ConvMaker | None = None,
                 width_mult: float = 1.0, stem: str = "imagenet",
                 norm_layer: NormLayer | None = None, drop_rate: float = 0.2) -> None:
        super().__init__()
        make = ConvMaker("mobilenetv2") if make is None else make
        _check_common(num_classes, in_chans, width_mult)
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if not 0 <= drop_rate < 1:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        norm_layer = nn.BatchNorm2d if norm_layer is None else norm_layer
        cifar = stem == "cifar"
        cin = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [_conv_norm_act(
            make, ConvSite("features.0.0", "stem", 3), in_chans, cin, 3, 1 if cifar else 2, 1,
            norm_layer)]
        reduction = 1 if cifar else 2
        self.feature_info: list[dict[str, Any]] = []
        for si, (t, c, n, s) in enumerate(_SETTING):
            cout = _make_divisible(c * width_mult)
            if s == 2:
                # The block before a (nominally) down-sampling stage ends a feature level;
                # the CIFAR stem keeps the same five levels at finer reductions.
                self.feature_info.append(dict(num_chs=cin, reduction=reduction,
                                              module=f"features.{len(features) - 1}"))
                s = 1 if cifar and si == 1 else s
                reduction *= s
            for i in range(n):
                idx = len(features)
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, norm_layer,
                                                 make, f"features.{idx}"))
                cin = cout
        idx = len(features)
        features.append(_conv_norm_act(make, ConvSite(f"features.{idx}.0", "head", 1), cin,
                                       self.last_channel, 1, 1, 1, norm_layer))
        self.feature_info.append(dict(num_chs=self.last_channel, reduction=reduction,
                                      module=f"features.{idx}"))
        self.features = nn.Sequential(*features)
        if make.terminal:
            self.terminal: TerminalLayer | None = TerminalLayer(make, self.last_channel,
                                                                norm_layer, nn.ReLU6)
            self.feature_info[-1]["module"] = "terminal"
        else:
            self.terminal = None
        self.num_features = self.last_channel
        self.classifier = nn.Sequential(
            nn.Dropout(p=drop_rate),
            make.make_classifier("classifier.1", self.last_channel, num_classes),
        )
        self.num_classes = num_classes
        self._make = make  # reset_classifier builds the same kind of classifier
        # timm's FeatureListNet must walk into ``features`` to reach the blocks.
        self.feature_flatten_sequential = True
        self.dynamic_convs = list(make.built)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in backbone_modules(self, self.dynamic_convs):
            if type(m) is nn.Conv2d:
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        return self.classifier[1]

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised classifier with ``num_classes`` outputs (``0``: an
        identity, the pooled features); a dynamic classifier stays dynamic (timm's API)."""
        _check_common(num_classes, 1, 1.0)
        head = self._make.make_classifier("classifier.1", self.last_channel, num_classes)
        if isinstance(head, nn.Linear):  # the initialisation of _init_weights
            nn.init.normal_(head.weight, 0, 0.01)
            nn.init.zeros_(head.bias)
        self.classifier[1] = head.to(self.features[0][0].weight.device)
        self.num_classes = num_classes
        self.dynamic_convs = [n for n in self.dynamic_convs if n != "classifier.1"] + (
            ["classifier.1"] if "classifier.1" in self._make.built[-1:] and num_classes
            else [])

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.features(x)
        return x if self.terminal is None else self.terminal(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _mobilenetv2(
    width: float,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    conv: str = "static",
    num_kernels: int | None = None,
    placement: PlacementArg = None,
    conv_kwargs: dict[str, Any] | None = None,
    stem: str = "imagenet",
    width_mult: float | None = None,
    norm_layer: NormLayer | None = None,
    drop_rate: float = 0.2,
    classifier: str | None = None,
) -> MobileNetV2:
    # ``width_mult`` overrides the entrypoint's width (0.5 / 0.75 / 1.0).
    width = width if width_mult is None else width_mult
    make = ConvMaker("mobilenetv2", conv, num_kernels, placement, conv_kwargs or {}, classifier)
    model = MobileNetV2(num_classes, in_chans, make, width, stem, norm_layer, drop_rate)
    make.check_used(f"mobilenetv2 x{width}")
    model.model_args = dict(arch="mobilenetv2", conv=conv, num_kernels=num_kernels,
                            placement=make.resolved_placement, conv_kwargs=make.conv_kwargs,
                            classifier=make.resolved_classifier, stem=stem, width_mult=width)
    return model


register_builder(__name__, _mobilenetv2)


# ---------------------------------------------------------------------------- entrypoints
@register_model
def mobilenetv2_050(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×0.5, static (1.97M parameters, torchvision's ``width_mult=0.5``)."""
    return _mobilenetv2(0.5, **kwargs)


@register_model
def mobilenetv2_075(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×0.75, static."""
    return _mobilenetv2(0.75, **kwargs)


@register_model
def mobilenetv2_100(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×1.0, static (3.50M parameters, torchvision's ``mobilenet_v2``)."""
    return _mobilenetv2(1.0, **kwargs)


@register_model
def mobilenetv2_050_a2d2c(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×0.5, A²D²C (kernel form), K=4, in the conv type's default placement."""
    model_args = dict(conv="a2d2c", num_kernels=4)
    return _mobilenetv2(0.5, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_050_a2d2c_plus(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×0.5, A²D²C+ (plus form), K=4, in the conv type's default placement."""
    model_args = dict(conv="a2d2c+", num_kernels=4)
    return _mobilenetv2(0.5, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_050_condconv(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×0.5, CondConv, 8 experts, in the conv type's default placement."""
    model_args = dict(conv="condconv", num_kernels=8)
    return _mobilenetv2(0.5, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_050_dynamicconv(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×0.5, DynamicConv, K=4, in the conv type's default placement."""
    model_args = dict(conv="dynamicconv", num_kernels=4)
    return _mobilenetv2(0.5, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_050_dcd(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×0.5, DCD (dynamic channel fusion), in the conv type's default placement."""
    model_args = dict(conv="dcd")
    return _mobilenetv2(0.5, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_050_odconv(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×0.5, ODConv 4x, in the conv type's default placement."""
    model_args = dict(conv="odconv", num_kernels=4)
    return _mobilenetv2(0.5, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_050_odconv_1x(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×0.5, ODConv 1x, in the conv type's default placement."""
    model_args = dict(conv="odconv", num_kernels=1)
    return _mobilenetv2(0.5, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_075_a2d2c(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×0.75, A²D²C (kernel form), K=4, in the conv type's default placement."""
    model_args = dict(conv="a2d2c", num_kernels=4)
    return _mobilenetv2(0.75, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_075_a2d2c_plus(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×0.75, A²D²C+ (plus form), K=4, in the conv type's default placement."""
    model_args = dict(conv="a2d2c+", num_kernels=4)
    return _mobilenetv2(0.75, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_075_condconv(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×0.75, CondConv, 8 experts, in the conv type's default placement."""
    model_args = dict(conv="condconv", num_kernels=8)
    return _mobilenetv2(0.75, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_075_dynamicconv(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×0.75, DynamicConv, K=4, in the conv type's default placement."""
    model_args = dict(conv="dynamicconv", num_kernels=4)
    return _mobilenetv2(0.75, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_075_dcd(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×0.75, DCD (dynamic channel fusion), in the conv type's default placement."""
    model_args = dict(conv="dcd")
    return _mobilenetv2(0.75, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_075_odconv(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×0.75, ODConv 4x, in the conv type's default placement."""
    model_args = dict(conv="odconv", num_kernels=4)
    return _mobilenetv2(0.75, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_075_odconv_1x(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×0.75, ODConv 1x, in the conv type's default placement."""
    model_args = dict(conv="odconv", num_kernels=1)
    return _mobilenetv2(0.75, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_100_a2d2c(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×1.0, A²D²C (kernel form), K=4, in the conv type's default placement."""
    model_args = dict(conv="a2d2c", num_kernels=4)
    return _mobilenetv2(1.0, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_100_a2d2c_plus(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×1.0, A²D²C+ (plus form), K=4, in the conv type's default placement."""
    model_args = dict(conv="a2d2c+", num_kernels=4)
    return _mobilenetv2(1.0, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_100_condconv(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×1.0, CondConv, 8 experts, in the conv type's default placement."""
    model_args = dict(conv="condconv", num_kernels=8)
    return _mobilenetv2(1.0, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_100_dynamicconv(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×1.0, DynamicConv, K=4, in the conv type's default placement."""
    model_args = dict(conv="dynamicconv", num_kernels=4)
    return _mobilenetv2(1.0, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_100_dcd(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×1.0, DCD (dynamic channel fusion), in the conv type's default placement."""
    model_args = dict(conv="dcd")
    return _mobilenetv2(1.0, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_100_odconv(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×1.0, ODConv 4x, in the conv type's default placement."""
    model_args = dict(conv="odconv", num_kernels=4)
    return _mobilenetv2(1.0, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_100_odconv_1x(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 ×1.0, ODConv 1x, in the conv type's default placement."""
    model_args = dict(conv="odconv", num_kernels=1)
    return _mobilenetv2(1.0, **dict(model_args, **kwargs))
