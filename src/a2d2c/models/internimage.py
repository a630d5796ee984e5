"""InternImage (DCNv3) and FlashInternImage (DCNv4), the official T/S/B configurations.

One architecture, two token mixers (SPEC §6). A stem of two 3×3 stride-2 convs (LN,
GELU between), four stages of pre-norm blocks ``x + DCN(LN(x))``, ``x + MLP(LN(x))``
(S and B: post-norm ``x + γ·LN(DCN(x))`` with layer scale γ), a 3×3 stride-2 conv + LN
between stages, and a head ``1×1 conv to 1.5× + BN + GELU``, average pool, Linear.
Inside a stage features are channels-last; between stages (and as ``features_only``
outputs) they are NCHW, as timm and torchvision expect.

Parameters at 1000 classes: InternImage-T 29.92M, FlashInternImage-T 29.82M (the
official ones; the paper's 25.39M, 12.22M and 27.32M are not reproduced by any
published configuration).

``stem="cifar"`` (32×32 inputs): both stem convs have stride 1, so the four stages run
at 32, 16, 8 and 4 pixels (ImageNet 224: 56, 28, 14, 7); nothing else changes.
``width_mult`` scales the channels in multiples of 16 with ``groups = channels / 16``
(every official configuration has 16 channels per group; DCNv4 requires a multiple).

The module layout differs from the official one (each downsampling conv opens the next
stage instead of closing the previous one), so official checkpoints need their keys
mapped before loading.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from ..layers.dcn import DCNv3, DCNv4
from ._registry import register_builder, register_model

__all__ = ["InternImage"]

STEMS = ("imagenet", "cifar")
CORE_OPS = ("DCNv3", "DCNv4")


class _ChannelsLastLN(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (permuted to channels-last and back)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _Mlp(nn.Module):
    def __init__(self, channels: int, hidden: int, fc2_bias: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels, bias=fc2_bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class InternImageLayer(nn.Module):
    """One block over channels-last ``(N, H, W, C)`` features."""

    def __init__(self, core_op: str, channels: int, group: int, mlp_ratio: float,
                 drop_path: float, post_norm: bool, layer_scale: float | None,
                 offset_scale: float, dw_kernel_size: int | None, center_feature_scale: bool,
                 mlp_fc2_bias: bool, dcn_output_bias: bool) -> None:
        super().__init__()
        self.core_op, self.post_norm = core_op, post_norm
        self.norm1 = nn.LayerNorm(channels, eps=1e-6)
        if core_op == "DCNv3":
            self.dcn: nn.Module = DCNv3(channels, group=group, offset_scale=offset_scale,
                                        dw_kernel_size=dw_kernel_size,
                                        center_feature_scale=center_feature_scale)
        else:
            self.dcn = DCNv4(channels, group=group, offset_scale=offset_scale,
                             dw_kernel_size=dw_kernel_size,
                             center_feature_scale=center_feature_scale,
                             output_bias=dcn_output_bias)
        self.norm2 = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = _Mlp(channels, int(channels * mlp_ratio), mlp_fc2_bias)
        self.drop_path = StochasticDepth(drop_path, "row") if drop_path > 0 else nn.Identity()
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(torch.full((channels,), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((channels,), float(layer_scale)))
        else:
            self.gamma1 = self.gamma2 = None

    def _mix(self, x: Tensor) -> Tensor:
        if self.core_op == "DCNv3":
            return self.dcn(x)
        n, h, w, c = x.shape
        return self.dcn(x.reshape(n, h * w, c), (h, w)).view(n, h, w, c)

    def forward(self, x: Tensor) -> Tensor:
        if self.post_norm:
            a = self.norm1(self._mix(x))
        else:
            a = self._mix(self.norm1(x))
        if self.gamma1 is not None:
            a = self.gamma1 * a
        x = x + self.drop_path(a)
        b = self.norm2(self.mlp(x)) if self.post_norm else self.mlp(self.norm2(x))
        if self.gamma2 is not None:
            b = self.gamma2 * b
        return x + self.drop_path(b)


class InternImageStage(nn.Module):
    """``[downsample] → blocks → [LN]``; NCHW in and out, channels-last inside."""

    def __init__(self, in_channels: int, channels: int, downsample: bool,
                 blocks: list[InternImageLayer], final_norm: bool) -> None:
        super().__init__()
        self.downsample = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, 2, 1, bias=False),
            _ChannelsLastLN(channels, eps=1e-6),
        ) if downsample else None
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(channels, eps=1e-6) if final_norm else None

    def forward(self, x: Tensor) -> Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        x = self.blocks(x.permute(0, 2, 3, 1))
        if self.norm is not None:
            x = self.norm(x)
        return x.permute(0, 3, 1, 2)


class InternImage(nn.Module):
    """InternImage / FlashInternImage classifier.

    Args:
        core_op: ``"DCNv3"`` (InternImage) or ``"DCNv4"`` (FlashInternImage).
        channels: width of the first stage (doubles per stage).
        depths, groups: blocks and DCN groups per stage.
        num_classes: classifier outputs (``0``: ``head`` is an identity).
        in_chans: input channels.
        mlp_ratio: MLP hidden width over channels.
        drop_path_rate: stochastic depth, linear over the blocks from 0.
        post_norm, layer_scale: S/B blocks (post-norm residuals with layer scale).
        offset_scale, dw_kernel_size, center_feature_scale: of every DCN.
        mlp_fc2_bias, dcn_output_bias: FlashInternImage drops both biases.
        cls_scale: head width over the last stage's width.
        stem: ``"imagenet"`` (stride 4) or ``"cifar"`` (stride 1).
    """

    def __init__(
        self,
        core_op: str = "DCNv3",
        channels: int = 64,
        depths: Sequence[int] = (4, 4, 18, 4),
        groups: Sequence[int] = (4, 8, 16, 32),
        num_classes: int = 1000,
        in_chans: int = 3,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        post_norm: bool = False,
        layer_scale: float | None = None,
        offset_scale: float = 1.0,
        dw_kernel_size: int | None = None,
        center_feature_scale: bool = False,
        mlp_fc2_bias: bool = True,
        dcn_output_bias: bool = True,
        cls_scale: float = 1.5,
        stem: str = "imagenet",
    ) -> None:
        super().__init__()
        if core_op not in CORE_OPS:
            raise ValueError(f"core_op must be one of {CORE_OPS}, got {core_op!r}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if len(depths) != len(groups) or not depths:
            raise ValueError(f"depths and groups need one entry per stage, got {list(depths)} "
                             f"and {list(groups)}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if not 0 <= drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.core_op, self.stem_type, self.num_classes = core_op, stem, num_classes
        stride = 2 if stem == "imagenet" else 1
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, channels // 2, 3, stride, 1),
            _ChannelsLastLN(channels // 2, eps=1e-6),
            nn.GELU(),
            nn.Conv2d(channels // 2, channels, 3, stride, 1),
            _ChannelsLastLN(channels, eps=1e-6),
        )
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        widths = [channels * 2 ** i for i in range(len(depths))]
        first = 0
        self.feature_info = []
        for i, (width, depth, group) in enumerate(zip(widths, depths, groups, strict=True)):
            blocks = [InternImageLayer(core_op, width, group, mlp_ratio, rates[first + k],
                                       post_norm, layer_scale, offset_scale, dw_kernel_size,
                                       center_feature_scale, mlp_fc2_bias, dcn_output_bias)
                      for k in range(depth)]
            first += depth
            stage = InternImageStage(widths[i - 1] if i else width, width, i > 0, blocks,
                                     final_norm=not post_norm or center_feature_scale)
            self.add_module(f"stage{i + 1}", stage)
            self.feature_info.append(dict(num_chs=width, reduction=stride * stride * 2 ** i,
                                          module=f"stage{i + 1}"))
        self.num_stages = len(depths)
        self.num_features = widths[-1]
        head = int(widths[-1] * cls_scale)
        self.conv_head = nn.Sequential(nn.Conv2d(widths[-1], head, 1, bias=False),
                                       nn.BatchNorm2d(head), nn.GELU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(head, num_classes) if num_classes > 0 else nn.Identity()
        self.dynamic_convs: list[str] = []
        self._init_weights()

    def _init_weights(self) -> None:
        # The official initialisation: Linear trunc-normal(0.02) with zero bias, LN (1, 0);
        # then every DCN resets its own (zero offsets/mask, xavier projections).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, (DCNv3, DCNv4)):
                m.reset_parameters()

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for i in range(self.num_stages):
            x = getattr(self, f"stage{i + 1}")(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(self.avgpool(self.conv_head(x)), 1)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier with ``num_classes`` outputs (``0``: an identity, the pooled
        features), initialised like the original head (timm's API)."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        width = self.conv_head[0].out_channels
        head = nn.Linear(width, num_classes) if num_classes else nn.Identity()
        if num_classes:
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
        self.head = head.to(self.conv_head[0].weight.device)
        self.num_classes = num_classes


_CONFIGS: dict[str, dict[str, Any]] = {
    # The official classification configs (InternImage and DCNv4 repositories).
    "internimage_t": dict(core_op="DCNv3", channels=64, depths=(4, 4, 18, 4),
                          groups=(4, 8, 16, 32), drop_path_rate=0.1),
    "internimage_s": dict(core_op="DCNv3", channels=80, depths=(4, 4, 21, 4),
                          groups=(5, 10, 20, 40), layer_scale=1e-5, post_norm=True,
                          drop_path_rate=0.4),
    "internimage_b": dict(core_op="DCNv3", channels=112, depths=(4, 4, 21, 4),
                          groups=(7, 14, 28, 56), layer_scale=1e-5, post_norm=True,
                          drop_path_rate=0.5),
    "flash_internimage_t": dict(core_op="DCNv4", channels=64, depths=(4, 4, 18, 4),
                                groups=(4, 8, 16, 32), drop_path_rate=0.1,
                                mlp_fc2_bias=False, dcn_output_bias=False),
    "flash_internimage_s": dict(core_op="DCNv4", channels=80, depths=(4, 4, 21, 4),
                                groups=(5, 10, 20, 40), layer_scale=1e-5, post_norm=True,
                                dw_kernel_size=3, drop_path_rate=0.4, mlp_fc2_bias=False,
                                dcn_output_bias=False),
    "flash_internimage_b": dict(core_op="DCNv4", channels=112, depths=(4, 4, 21, 4),
                                groups=(7, 14, 28, 56), layer_scale=1e-5, post_norm=True,
                                dw_kernel_size=3, offset_scale=0.5, drop_path_rate=0.5,
                                mlp_fc2_bias=False, dcn_output_bias=False),
}


def _internimage(
    arch: str,
    /,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    stem: str = "imagenet",
    width_mult: float = 1.0,
    depths: Sequence[int] | None = None,
    drop_path_rate: float | None = None,
    offset_scale: float | None = None,
    center_feature_scale: bool = False,
) -> InternImage:
    cfg = dict(_CONFIGS[arch])
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not (
            width_mult > 0):
        raise ValueError(f"width_mult must be a number > 0, got {width_mult!r}")
    if width_mult != 1.0:
        # Keep 16 channels per group (as every official configuration has).
        cfg["channels"] = max(16, round(cfg["channels"] * width_mult / 16) * 16)
        cfg["groups"] = tuple(cfg["channels"] * 2 ** i // 16 for i in range(len(cfg["groups"])))
    if depths is not None:
        if len(depths) != len(cfg["depths"]) or any(d < 1 for d in depths):
            raise ValueError(f"depths must be {len(cfg['depths'])} positive ints, got "
                             f"{list(depths)}")
        cfg["depths"] = tuple(depths)
    if drop_path_rate is not None:
        cfg["drop_path_rate"] = drop_path_rate
    if offset_scale is not None:
        cfg["offset_scale"] = offset_scale
    model = InternImage(**cfg, num_classes=num_classes, in_chans=in_chans, stem=stem,
                        center_feature_scale=center_feature_scale)
    model.model_args = dict(arch=arch, conv="static", stem=stem, width_mult=width_mult,
                            **{k: (list(v) if isinstance(v, tuple) else v)
                               for k, v in cfg.items()})
    return model


register_builder(__name__, _internimage)


@register_model
def internimage_t(**kwargs: Any) -> InternImage:
    """InternImage-T (DCNv3): 29.92M parameters at 1000 classes."""
    return _internimage("internimage_t", **kwargs)


@register_model
def internimage_s(**kwargs: Any) -> InternImage:
    """InternImage-S (DCNv3, post-norm, layer scale)."""
    return _internimage("internimage_s", **kwargs)


@register_model
def internimage_b(**kwargs: Any) -> InternImage:
    """InternImage-B (DCNv3, post-norm, layer scale)."""
    return _internimage("internimage_b", **kwargs)


@register_model
def flash_internimage_t(**kwargs: Any) -> InternImage:
    """FlashInternImage-T (DCNv4): 29.82M parameters at 1000 classes."""
    return _internimage("flash_internimage_t", **kwargs)


@register_model
def flash_internimage_s(**kwargs: Any) -> InternImage:
    """FlashInternImage-S (DCNv4, post-norm, layer scale, 3×3 depthwise offset conv)."""
    return _internimage("flash_internimage_s", **kwargs)


@register_model
def flash_internimage_b(**kwargs: Any) -> InternImage:
    """FlashInternImage-B (DCNv4, post-norm, layer scale, offset scale 0.5)."""
    return _internimage("flash_internimage_b", **kwargs)
