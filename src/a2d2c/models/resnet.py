"""ResNet-18 / ResNet-50 with the convolution injected (one implementation for every conv type).

Module and attribute names are torchvision's (``conv1, bn1, relu, maxpool,
layer1..layer4, avgpool, fc``; blocks ``conv1/bn1/conv2/bn2[/conv3/bn3]/downsample``),
so a torchvision ``state_dict`` loads into the static models and gives identical
outputs, and ``torchvision.models.detection.backbone_utils.BackboneWithFPN`` can take
``layer1..layer4`` directly.

Every convolution is created by a :class:`~a2d2c.models._placement.ConvMaker` under
its qualified name, which makes it ``nn.Conv2d`` or the requested dynamic type
(``a2d2c.create_conv2d``) according to the placement.

ResNet-50 comes in two variants with identical parameters (SPEC §3):

* ``"v1.5"`` (the default; torchvision's): the stride of a down-sampling bottleneck
  sits on the 3×3 conv — 4.09 GMAdds at 224².
* ``"v1"`` (He et al. 2016, the paper's 3.858 GMAdds): the stride sits on the first
  1×1 conv.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from ._placement import ConvMaker, ConvSite, PlacementArg, TerminalLayer, backbone_modules
from ._registry import register_builder, register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]

NormLayer = Callable[[int], nn.Module]
STEMS = ("imagenet", "cifar")
VARIANTS = ("v1", "v1.5")


def _drop_path(p: float) -> nn.Module:
    """Stochastic depth on the residual branch (torchvision's, per sample); identity at 0."""
    return StochasticDepth(p, "row") if p > 0 else nn.Identity()


class BasicBlock(nn.Module):
    """Two 3×3 convs with an identity (or 1×1 projection) shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None,
                 norm_layer: NormLayer, make: ConvMaker, prefix: str,
                 variant: str = "v1.5", drop_path: float = 0.0) -> None:
        super().__init__()
        self.drop_path = _drop_path(drop_path)
        self.conv1 = make(ConvSite(f"{prefix}.conv1", "block", 3, first_in_block=True),
                          inplanes, planes, 3, stride, 1)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = make(ConvSite(f"{prefix}.conv2", "block", 3), planes, planes, 3, 1, 1)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.drop_path(out) + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3, 1×1 expand (×4); the stride on the 3×3 (v1.5) or the first 1×1 (v1)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None,
                 norm_layer: NormLayer, make: ConvMaker, prefix: str,
                 variant: str = "v1.5", drop_path: float = 0.0) -> None:
        super().__init__()
        self.drop_path = _drop_path(drop_path)
        s1, s2 = (stride, 1) if variant == "v1" else (1, stride)
        self.conv1 = make(ConvSite(f"{prefix}.conv1", "block", 1, first_in_block=True),
                          inplanes, planes, 1, s1, 0)
        self.bn1 = norm_layer(planes)
        self.conv2 = make(ConvSite(f"{prefix}.conv2", "block", 3), planes, planes, 3, s2, 1)
        self.bn2 = norm_layer(planes)
        self.conv3 = make(ConvSite(f"{prefix}.conv3", "block", 1), planes,
                          planes * self.expansion, 1, 1, 0)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.drop_path(out) + identity)


class ResNet(nn.Module):
    """ResNet (He et al. 2016) with injectable convolutions.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``[2, 2, 2, 2]``.
        num_classes: classifier outputs; ``0`` leaves ``fc`` an identity (pooled features).
        in_chans: input channels.
        make: the conv maker (conv type, K, placement); static convs by default.
        stem: ``"imagenet"`` (7×7 stride-2 conv + 3×3 max-pool) or ``"cifar"`` (3×3
            stride-1 conv, no max-pool; ``maxpool`` is an ``nn.Identity``).
        width_mult: multiplies every width (64, 128, 256, 512).
        norm_layer: normalisation constructor ``f(num_features)``, default
            ``nn.BatchNorm2d`` (e.g. ``torchvision.ops.FrozenBatchNorm2d``).
        variant: ``"v1.5"`` or ``"v1"`` (where a bottleneck puts its stride).
        drop_path_rate: stochastic depth (``torchvision.ops.StochasticDepth``, per
            sample) on the residual branches, rising linearly from 0 in the first block
            to ``drop_path_rate`` in the last (timm's rule).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        make: ConvMaker | None = None,
        stem: str = "imagenet",
        width_mult: float = 1.0,
        norm_layer: NormLayer | None = None,
        variant: str = "v1.5",
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        make = ConvMaker("resnet18") if make is None else make
        if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) or (
                not 0 <= drop_path_rate < 1):
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        total = sum(layers)
        self._drop_rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        _check_common(num_classes, in_chans, width_mult)
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        norm_layer = nn.BatchNorm2d if norm_layer is None else norm_layer
        if not callable(norm_layer):
            raise TypeError(f"norm_layer must be callable, got {norm_layer!r}")
        widths = [max(1, round(w * width_mult)) for w in (64, 128, 256, 512)]
        self.inplanes = widths[0]
        self.variant = variant
        self.stem_type = stem
        if stem == "imagenet":
            self.conv1 = make(ConvSite("conv1", "stem", 7), in_chans, widths[0], 7, 2, 3)
        else:
            self.conv1 = make(ConvSite("conv1", "stem", 3), in_chans, widths[0], 3, 1, 1)
        self.bn1 = norm_layer(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = (nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem == "imagenet"
                        else nn.Identity())
        for i, (width, n) in enumerate(zip(widths, layers, strict=True)):
            stage = self._make_layer(block, width, n, 1 if i == 0 else 2, norm_layer, make,
                                     f"layer{i + 1}", variant)
            self.add_module(f"layer{i + 1}", stage)
        self.num_features = widths[3] * block.expansion
        if make.terminal:
            self.terminal: TerminalLayer | None = TerminalLayer(make, self.num_features,
                                                                norm_layer)
        else:
            self.terminal = None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = make.make_classifier("fc", self.num_features, num_classes)
        self.num_classes = num_classes
        self._make = make  # reset_classifier builds the same kind of classifier

        r = 4 if stem == "imagenet" else 1
        self.feature_info = [dict(num_chs=widths[0], reduction=r // 2 or 1, module="relu")] + [
            dict(num_chs=w * block.expansion, reduction=r * 2 ** i, module=f"layer{i + 1}")
            for i, w in enumerate(widths)
        ]
        if self.terminal is not None:
            self.feature_info[-1]["module"] = "terminal"
        self.dynamic_convs = list(make.built)
        self._init_weights()

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int,
                    stride: int, norm_layer: NormLayer, make: ConvMaker, prefix: str,
                    variant: str) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                make(ConvSite(f"{prefix}.0.downsample.0", "downsample", 1), self.inplanes,
                     planes * block.expansion, 1, stride, 0),
                norm_layer(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, norm_layer, make,
                        f"{prefix}.0", variant, self._drop_rates.pop(0))]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None, norm_layer, make, f"{prefix}.{i}",
                         variant, self._drop_rates.pop(0)) for i in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # torchvision's initialisation for the static parts; dynamic layers keep their own
        # (each of their K kernels is initialised like nn.Conv2d by reset_parameters).
        for m in backbone_modules(self, self.dynamic_convs):
            if type(m) is nn.Conv2d:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised classifier with ``num_classes`` outputs (``0``: an
        identity, the pooled features); a dynamic classifier stays dynamic (timm's API)."""
        _check_common(num_classes, 1, 1.0)
        self.fc = self._make.make_classifier("fc", self.num_features, num_classes).to(
            self.bn1.weight.device)
        self.num_classes = num_classes
        self.dynamic_convs = [n for n in self.dynamic_convs if n != "fc"] + (
            ["fc"] if "fc" in self._make.built[-1:] and num_classes else [])

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.terminal is not None:
            x = self.terminal(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _check_common(num_classes: int, in_chans: int, width_mult: float) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not (
        width_mult > 0
    ):
        raise ValueError(f"width_mult must be a number > 0, got {width_mult!r}")


_ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


def _resnet(
    arch: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    conv: str = "static",
    num_kernels: int | None = None,
    placement: PlacementArg = None,
    conv_kwargs: dict[str, Any] | None = None,
    stem: str = "imagenet",
    width_mult: float = 1.0,
    norm_layer: NormLayer | None = None,
    variant: str | None = None,
    classifier: str | None = None,
    drop_path_rate: float = 0.0,
) -> ResNet:
    block, layers = _ARCHS[arch]
    if variant is not None and block is BasicBlock:
        raise ValueError(f"variant applies to bottleneck ResNets only, not {arch}")
    make = ConvMaker(arch, conv, num_kernels, placement, conv_kwargs or {}, classifier)
    model = ResNet(block, layers, num_classes, in_chans, make, stem, width_mult, norm_layer,
                   variant or "v1.5", drop_path_rate)
    make.check_used(arch)
    model.model_args = dict(arch=arch, conv=conv, num_kernels=num_kernels,
                            placement=make.resolved_placement, conv_kwargs=make.conv_kwargs,
                            classifier=make.resolved_classifier, stem=stem,
                            width_mult=width_mult, variant=model.variant if block is Bottleneck
                            else None)
    return model


register_builder(__name__, _resnet)


# ---------------------------------------------------------------------------- entrypoints
# Two lines each over ``_resnet``; overrides passed to create_model win over model_args.
@register_model
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18, static convolutions (torchvision's, 11.69M parameters)."""
    return _resnet("resnet18", **kwargs)


@register_model
def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50 v1.5 (``variant="v1"``: stride on the first 1×1), static, 25.56M params."""
    return _resnet("resnet50", **kwargs)


@register_model
def resnet18_a2d2c(**kwargs: Any) -> ResNet:
    """ResNet-18, A²D²C (kernel form), K=4, in the conv type's default placement."""
    model_args = dict(conv="a2d2c", num_kernels=4)
    return _resnet("resnet18", **dict(model_args, **kwargs))


@register_model
def resnet18_a2d2c_plus(**kwargs: Any) -> ResNet:
    """ResNet-18, A²D²C+ (plus form), K=4, in the conv type's default placement."""
    model_args = dict(conv="a2d2c+", num_kernels=4)
    return _resnet("resnet18", **dict(model_args, **kwargs))


@register_model
def resnet18_condconv(**kwargs: Any) -> ResNet:
    """ResNet-18, CondConv, 8 experts, in the conv type's default placement."""
    model_args = dict(conv="condconv", num_kernels=8)
    return _resnet("resnet18", **dict(model_args, **kwargs))


@register_model
def resnet18_dynamicconv(**kwargs: Any) -> ResNet:
    """ResNet-18, DynamicConv, K=4, in the conv type's default placement."""
    model_args = dict(conv="dynamicconv", num_kernels=4)
    return _resnet("resnet18", **dict(model_args, **kwargs))


@register_model
def resnet18_dcd(**kwargs: Any) -> ResNet:
    """ResNet-18, DCD (dynamic channel fusion), in the conv type's default placement."""
    model_args = dict(conv="dcd")
    return _resnet("resnet18", **dict(model_args, **kwargs))


@register_model
def resnet18_odconv(**kwargs: Any) -> ResNet:
    """ResNet-18, ODConv 4x, in the conv type's default placement."""
    model_args = dict(conv="odconv", num_kernels=4)
    return _resnet("resnet18", **dict(model_args, **kwargs))


@register_model
def resnet18_odconv_1x(**kwargs: Any) -> ResNet:
    """ResNet-18, ODConv 1x, in the conv type's default placement."""
    model_args = dict(conv="odconv", num_kernels=1)
    return _resnet("resnet18", **dict(model_args, **kwargs))


@register_model
def resnet50_a2d2c(**kwargs: Any) -> ResNet:
    """ResNet-50 v1.5, A²D²C (kernel form), K=4, in the conv type's default placement."""
    model_args = dict(conv="a2d2c", num_kernels=4)
    return _resnet("resnet50", **dict(model_args, **kwargs))


@register_model
def resnet50_a2d2c_plus(**kwargs: Any) -> ResNet:
    """ResNet-50 v1.5, A²D²C+ (plus form), K=4, in the conv type's default placement."""
    model_args = dict(conv="a2d2c+", num_kernels=4)
    return _resnet("resnet50", **dict(model_args, **kwargs))


@register_model
def resnet50_condconv(**kwargs: Any) -> ResNet:
    """ResNet-50 v1.5, CondConv, 8 experts, in the conv type's default placement."""
    model_args = dict(conv="condconv", num_kernels=8)
    return _resnet("resnet50", **dict(model_args, **kwargs))


@register_model
def resnet50_dynamicconv(**kwargs: Any) -> ResNet:
    """ResNet-50 v1.5, DynamicConv, K=4, in the conv type's default placement."""
    model_args = dict(conv="dynamicconv", num_kernels=4)
    return _resnet("resnet50", **dict(model_args, **kwargs))


@register_model
def resnet50_dcd(**kwargs: Any) -> ResNet:
    """ResNet-50 v1.5, DCD (dynamic channel fusion), in the conv type's default placement."""
    model_args = dict(conv="dcd")
    return _resnet("resnet50", **dict(model_args, **kwargs))


@register_model
def resnet50_odconv(**kwargs: Any) -> ResNet:
    """ResNet-50 v1.5, ODConv 4x, in the conv type's default placement."""
    model_args = dict(conv="odconv", num_kernels=4)
    return _resnet("resnet50", **dict(model_args, **kwargs))


@register_model
def resnet50_odconv_1x(**kwargs: Any) -> ResNet:
    """ResNet-50 v1.5, ODConv 1x, in the conv type's default placement."""
    model_args = dict(conv="odconv", num_kernels=1)
    return _resnet("resnet50", **dict(model_args, **kwargs))
