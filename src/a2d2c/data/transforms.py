"""Augmentations whose randomness comes from an explicit ``torch.Generator``.

Training must be resumable bit for bit, also from the middle of an epoch. The data
order is a pure function of ``(seed, epoch)`` (see :mod:`a2d2c.data.sampler`) and every
sample carries its own seed, so its augmentation is a pure function of ``(seed, epoch,
index)``: no transform here touches the global RNG (which the model uses for A²D²C's
point sampling), and it does not matter which worker process loads a sample.

Transforms are callables ``t(img, generator) -> img`` on PIL images or ``(C, H, W)``
tensors; deterministic ones ignore the generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchvision.transforms.functional as TF
from torch import Tensor

__all__ = [
    "CenterCrop",
    "Compose",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Resize",
    "ToTensor",
]

Image = Any  # PIL.Image.Image or Tensor


def _size(img: Image) -> tuple[int, int]:
    """(height, width) of a PIL image or a ``(..., H, W)`` tensor."""
    if isinstance(img, Tensor):
        return int(img.shape[-2]), int(img.shape[-1])
    w, h = img.size
    return h, w


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Image, torch.Generator], Image]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Image, generator: torch.Generator) -> Image:
        for t in self.transforms:
            img = t(img, generator)
        return img

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(map(repr, self.transforms)) + ")"


class Resize:
    """Resize the shorter side to ``size`` (``square=False``) or to ``size × size``."""

    def __init__(self, size: int, square: bool = False) -> None:
        self.size, self.square = int(size), bool(square)

    def __call__(self, img: Image, generator: torch.Generator) -> Image:
        size = [self.size, self.size] if self.square else [self.size]
        return TF.resize(img, size, antialias=True)

    def __repr__(self) -> str:
        return f"Resize({self.size}, square={self.square})"


class CenterCrop:
    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, img: Image, generator: torch.Generator) -> Image:
        return TF.center_crop(img, [self.size, self.size])

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


class RandomCrop:
    """A ``size × size`` crop at a uniformly drawn offset, after zero ``padding``."""

    def __init__(self, size: int, padding: int = 0) -> None:
        self.size, self.padding = int(size), int(padding)

    def __call__(self, img: Image, generator: torch.Generator) -> Image:
        if self.padding:
            img = TF.pad(img, [self.padding])
        h, w = _size(img)
        if h < self.size or w < self.size:
            raise ValueError(f"RandomCrop({self.size}): image of size {h}x{w} is smaller")
        top = int(torch.randint(0, h - self.size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - self.size + 1, (1,), generator=generator))
        return TF.crop(img, top, left, self.size, self.size)

    def __repr__(self) -> str:
        return f"RandomCrop({self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, img: Image, generator: torch.Generator) -> Image:
        if float(torch.rand((), generator=generator)) < self.p:
            return TF.hflip(img)
        return img

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ToTensor:
    """PIL image or uint8 tensor → float tensor in [0, 1]."""

    def __call__(self, img: Image, generator: torch.Generator) -> Tensor:
        if isinstance(img, Tensor):
            return img.float().div_(255) if img.dtype == torch.uint8 else img.float()
        return TF.pil_to_tensor(img.convert("RGB")).float().div_(255)

    def __repr__(self) -> str:
        return "ToTensor()"


class Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, img: Tensor, generator: torch.Generator) -> Tensor:
        return (img - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"
