"""Recipe augmentations from ``torchvision.transforms.v2``, resumable bit for bit.

Per sample (inside the dataset's transform, a pure function of ``(seed, epoch,
index)`` through :class:`a2d2c.data.transforms.Seeded`):

* ``data.auto_augment``: ``randaugment`` (``v2.RandAugment(num_ops, magnitude)``),
  ``trivialaugment`` (``v2.TrivialAugmentWide``) or ``autoaugment``
  (``v2.AutoAugment(policy)``), on the image before it becomes a float tensor;
* ``data.random_erasing``: ``v2.RandomErasing(p)`` on the normalised tensor.

Per batch (in the training loop, a pure function of ``(seed, epoch, step, rank)``
through :class:`BatchMix`):

* ``data.mixup_alpha``/``data.cutmix_alpha``: ``v2.MixUp``/``v2.CutMix``; with both
  set, each batch uses one of the two with probability ½ (torchvision's reference
  recipe). Targets become class probabilities: MixUp's ``x' = λ·x + (1−λ)·x_r`` with
  ``λ ~ Beta(α, α)`` and ``y' = λ·onehot(y) + (1−λ)·onehot(y_r)``; CutMix pastes a box
  of ``x_r`` and sets ``λ = 1 − box area / image area``; ``x_r, y_r`` is the batch rolled
  by one. Every target row sums to one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import v2

from . import transforms as T
from .sampler import sample_seed

__all__ = ["AUTO_AUGMENTS", "AUTO_AUGMENT_POLICIES", "BatchMix", "build_batch_mix",
           "extend_train_transform"]

AUTO_AUGMENTS = ("randaugment", "trivialaugment", "autoaugment")
AUTO_AUGMENT_POLICIES = ("imagenet", "cifar10", "svhn")
# a distinct stream for batch mixing (sample_seed's third argument is an index there)
_BATCH_STREAM = 0x6D69_7875


def auto_augment(cfg: Any) -> Callable | None:
    """The v2 auto-augmentation named by ``cfg.auto_augment`` (``None``: none)."""
    name = getattr(cfg, "auto_augment", None)
    if name is None:
        return None
    if name == "randaugment":
        return v2.RandAugment(num_ops=cfg.rand_augment_ops,
                              magnitude=cfg.rand_augment_magnitude)
    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy(cfg.auto_augment_policy))
    raise ValueError(f"data.auto_augment={name!r}: choose from {', '.join(AUTO_AUGMENTS)}")


class _ToUint8:
    """Auto-augmentations work on uint8 images; a float image is converted there and
    back (PIL images pass through)."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, img: Any) -> Any:
        if isinstance(img, Tensor) and img.is_floating_point():
            out = self.transform((img.clamp(0, 1) * 255).round().to(torch.uint8))
            return out.float().div_(255)
        return self.transform(img)

    def __repr__(self) -> str:
        return repr(self.transform)


def extend_train_transform(transform: T.Compose, cfg: Any) -> T.Compose:
    """``transform`` with the configured per-sample augmentations inserted: the
    auto-augmentation just before :class:`~a2d2c.data.transforms.ToTensor`, random
    erasing at the end (after normalisation). Unchanged when neither is set."""
    aa = auto_augment(cfg)
    erasing = getattr(cfg, "random_erasing", 0.0)
    if aa is None and not erasing:
        return transform
    ts = list(transform.transforms)
    if aa is not None:
        at = next((i for i, t in enumerate(ts) if isinstance(t, T.ToTensor)), len(ts))
        ts.insert(at, T.Seeded(_ToUint8(aa)))
    if erasing:
        ts.append(T.Seeded(v2.RandomErasing(p=erasing, value=0)))
    return T.Compose(ts)


class BatchMix:
    """MixUp and/or CutMix on a training batch, seeded per ``(seed, epoch, step, rank)``.

    ``mix(x, y, epoch=e, step=s)`` returns the mixed images and ``(B, num_classes)``
    target probabilities; the global RNG is forked, so the model's random stream is
    unaffected, and a resumed run mixes every batch exactly as before.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 *, seed: int = 0, rank: int = 0) -> None:
        ops = []
        if mixup_alpha > 0:
            ops.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            ops.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        if not ops:
            raise ValueError("BatchMix needs mixup_alpha > 0 or cutmix_alpha > 0")
        self.op = ops[0] if len(ops) == 1 else v2.RandomChoice(ops)
        self.seed, self.rank = int(seed), int(rank)

    def __call__(self, x: Tensor, y: Tensor, *, epoch: int, step: int) -> tuple[Tensor, Tensor]:
        s = sample_seed(self.seed ^ _BATCH_STREAM, epoch, step * 65536 + self.rank)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            return self.op(x, y)

    def __repr__(self) -> str:
        return f"BatchMix({self.op!r})"


def build_batch_mix(cfg: Any, num_classes: int, *, seed: int = 0, rank: int = 0
                    ) -> BatchMix | None:
    """The :class:`BatchMix` of ``cfg.mixup_alpha``/``cfg.cutmix_alpha`` (``None``: off)."""
    mixup, cutmix = getattr(cfg, "mixup_alpha", 0.0), getattr(cfg, "cutmix_alpha", 0.0)
    if not (mixup > 0 or cutmix > 0):
        return None
    return BatchMix(num_classes, mixup, cutmix, seed=seed, rank=rank)
