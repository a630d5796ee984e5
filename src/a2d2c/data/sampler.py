"""A resumable distributed sampler: the data order as a pure function of (seed, epoch).

:class:`ResumableSampler` is a :class:`torch.utils.data.DistributedSampler` (shuffle with
a generator seeded by ``seed + epoch``, shard by rank, ``set_epoch`` every epoch) that

* works without a process group (``num_replicas``/``rank`` are always given; a single
  process is ``num_replicas=1, rank=0``);
* yields ``(index, sample_seed)`` pairs, ``sample_seed`` a hash of ``(seed, epoch,
  index)``, which :class:`SeededDataset` turns into the generator of that sample's
  augmentation — so what a sample looks like does not depend on which worker or which
  rank loads it, or on whether the run was interrupted;
* can start part-way into an epoch (:meth:`skip`) to resume exactly from a checkpoint
  written mid-epoch;
* can shard without padding (``pad=False``) for evaluation, so every sample is counted
  exactly once when metrics are summed over ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["ResumableSampler", "SeededDataset", "sample_seed"]

_MASK64 = (1 << 63) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample in one epoch (splitmix64 over the three integers)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB)
    x &= (1 << 64) - 1
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        x ^= x >> shift
        x = (x * mult) & ((1 << 64) - 1)
    x ^= x >> 31
    return x & _MASK64


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` yielding ``(index, sample_seed)``; see the module docstring."""

    def __init__(self, dataset: Dataset, *, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 pad: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=drop_last)
        self.pad = pad
        self.start = 0
        if not pad:
            n = len(dataset)  # type: ignore[arg-type]
            self.num_samples = len(range(rank, n, num_replicas))
            self.total_size = n

    def skip(self, num_samples: int) -> None:
        """Start the next iteration ``num_samples`` samples into this rank's shard."""
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.start = int(num_samples)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start = 0

    def indices(self) -> list[int]:
        """This rank's indices for the current epoch, from the start of the epoch."""
        if self.pad:
            return list(super().__iter__())
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        return order[self.rank:n:self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        idx = self.indices()[self.start:]
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in idx])

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


class SeededDataset(Dataset):
    """Wraps ``base`` (returning raw ``(image, target)``) and applies ``transform(img, gen)``.

    Indexed by the ``(index, sample_seed)`` pairs of :class:`ResumableSampler` (or a
    plain ``int``, which uses seed 0). Attributes of ``base`` (``num_classes``,
    ``in_chans``, ``classes``) are forwarded.
    """

    def __init__(self, base: Dataset, transform: Callable[[Any, torch.Generator], Any]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        img, target = self.base[index]
        gen = torch.Generator()
        gen.manual_seed(seed)
        return self.transform(img, gen), target

    _FORWARDED = frozenset({"num_classes", "in_chans", "classes"})

    def __getattr__(self, name: str) -> Any:
        # only the dataset's metadata: forwarding e.g. ``__getitems__`` would bypass
        # the transform
        if name in SeededDataset._FORWARDED and "base" in self.__dict__:
            return getattr(self.base, name)
        raise AttributeError(name)
