"""Augmentations whose randomness comes from an explicit ``torch.Generator``.

Training must be resumable bit for bit, also from the middle of an epoch. The data
order is a pure function of ``(seed, epoch)`` (see :mod:`a2d2c.data.sampler`) and every
sample carries its own seed, so its augmentation is a pure function of ``(seed, epoch,
index)``: no transform here touches the global RNG (which the model uses for A²D²C's
point sampling), and it does not matter which worker process loads a sample.

Transforms are callables ``t(img, generator) -> img`` on PIL images or ``(C, H, W)``
tensors; deterministic ones ignore the generator. The geometric and photometric ones are
``torchvision.transforms.v2`` transforms run under :class:`Seeded` (a forked global RNG
seeded from the sample's generator); only :class:`Compose` and :class:`ToTensor` (PIL
→ RGB float, uint8 tensors scaled to [0, 1]) are written here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchvision.transforms.functional as TF
from torch import Tensor
from torchvision.transforms import v2

__all__ = [
    "CenterCrop",
    "Compose",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Resize",
    "Seeded",
    "ToTensor",
]

Image = Any  # PIL.Image.Image or Tensor


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Image, torch.Generator], Image]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Image, generator: torch.Generator) -> Image:
        for t in self.transforms:
            img = t(img, generator)
        return img

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(map(repr, self.transforms)) + ")"


class Seeded:
    """A ``torchvision.transforms.v2`` transform made a pure function of a generator.

    v2 transforms draw from the global torch RNG. Here each call draws one seed from the
    sample's ``generator``, runs the transform under ``torch.random.fork_rng`` seeded
    with it, and restores the global RNG afterwards: the result depends only on the
    generator (i.e. on ``(seed, epoch, index)``), and the model's random stream (A²D²C's
    point sampling) is untouched, whichever worker process runs it.
    """

    def __init__(self, transform: Callable[[Image], Image]) -> None:
        self.transform = transform

    def __call__(self, img: Image, generator: torch.Generator) -> Image:
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(img)

    def __repr__(self) -> str:
        return repr(self.transform)


class _Fixed:
    """A deterministic v2 transform in the ``t(img, generator)`` interface."""

    def __init__(self, transform: Callable[[Image], Image]) -> None:
        self.transform = transform

    def __call__(self, img: Image, generator: torch.Generator) -> Image:
        return self.transform(img)

    def __repr__(self) -> str:
        return repr(self.transform)


def Resize(size: int, square: bool = False) -> _Fixed:
    """Resize the shorter side to ``size`` (``square=False``) or to ``size × size``
    (``v2.Resize``, antialiased)."""
    return _Fixed(v2.Resize([int(size)] * 2 if square else int(size), antialias=True))


def CenterCrop(size: int) -> _Fixed:
    return _Fixed(v2.CenterCrop(int(size)))


def RandomCrop(size: int, padding: int = 0) -> Seeded:
    """A ``size × size`` crop at a uniformly drawn offset, after zero ``padding``."""
    return Seeded(v2.RandomCrop(int(size), padding=int(padding) or None))


def RandomHorizontalFlip(p: float = 0.5) -> Seeded:
    return Seeded(v2.RandomHorizontalFlip(float(p)))


class ToTensor:
    """PIL image or uint8 tensor → float tensor in [0, 1]."""

    def __call__(self, img: Image, generator: torch.Generator) -> Tensor:
        if isinstance(img, Tensor):
            return img.float().div_(255) if img.dtype == torch.uint8 else img.float()
        return TF.pil_to_tensor(img.convert("RGB")).float().div_(255)

    def __repr__(self) -> str:
        return "ToTensor()"


class Normalize(_Fixed):
    """``v2.Normalize``; ``mean``/``std`` are kept as ``(C, 1, 1)`` tensors for callers that
    undo the normalisation (visualisation)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(v2.Normalize(list(mean), list(std)))
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
