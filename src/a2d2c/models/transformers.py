"""ViT-Small and Swin-Tiny, the transformer rows of the paper's tables, built by timm.

They are not dynamic-convolution models; they are here so that every row of the
tables can be built (and profiled) by name. ``stem="cifar"`` (or an explicit
``img_size``) configures them for small inputs:

* ``vit_small``: ViT-S/16 at 224² (22.05M parameters); for 32² the patch is 4 (an 8×8
  token grid), the usual CIFAR setting.
* ``swin_tiny``: Swin-T, patch 4, window 7 at 224² (28.29M); for 32² patch 2 and
  window 4 (token grids 16, 8, 4, 2; timm shrinks a window to the grid when larger).

Requires timm (``pip install a2d2c[timm]``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ._registry import register_builder, register_model

__all__: list[str] = []

STEMS = ("imagenet", "cifar")
_CONFIGS = {
    # name: (timm model, {img_size: (patch_size, window_size)})
    "vit_small": ("vit_small_patch16_224", 16, None),
    "swin_tiny": ("swin_tiny_patch4_window7_224", 4, 7),
}


def _timm_transformer(
    arch: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    stem: str = "imagenet",
    img_size: int | None = None,
    patch_size: int | None = None,
    window_size: int | None = None,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    from .._optional import require

    timm = require("timm", f"model {arch!r}")
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    timm_name, patch, window = _CONFIGS[arch]
    size = img_size if img_size is not None else (32 if stem == "cifar" else 224)
    small = size <= 64
    kwargs: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, img_size=size,
                                  drop_path_rate=drop_path_rate)
    kwargs["patch_size"] = patch_size or ((4 if arch == "vit_small" else 2) if small else patch)
    if window is not None:
        kwargs["window_size"] = window_size or (4 if small else window)
    elif window_size is not None:
        raise ValueError(f"window_size applies to swin_tiny only, not {arch}")
    model = timm.create_model(timm_name, **kwargs)
    model.model_args = dict(arch=arch, conv="static", timm_model=timm_name, **{
        k: v for k, v in kwargs.items() if k not in ("num_classes", "in_chans")})
    model.dynamic_convs = []
    return model


register_builder(__name__, _timm_transformer)


@register_model
def vit_small(**kwargs: Any) -> nn.Module:
    """ViT-Small/16 (timm ``vit_small_patch16_224``); ``stem="cifar"``: 32², patch 4."""
    return _timm_transformer("vit_small", **kwargs)


@register_model
def swin_tiny(**kwargs: Any) -> nn.Module:
    """Swin-Tiny (timm ``swin_tiny_patch4_window7_224``); ``stem="cifar"``: 32², patch 2."""
    return _timm_transformer("swin_tiny", **kwargs)
