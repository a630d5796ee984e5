"""Datasets and loaders for training and evaluation.

A registry maps a dataset name to a :class:`DatasetSpec`::

    info = a2d2c.data.dataset_info(cfg.data)          # num_classes, in_chans (no data read)
    train = a2d2c.data.build_dataset("cifar100", "train", cfg.data)
    loader = a2d2c.data.build_loader(train, cfg.data, train=True, seed=0)

``cfg`` is an :class:`a2d2c.engine.DataConfig` (any object with its attributes).
Registered: ``imagefolder`` (any ``train/<class>/*``, ``val/<class>/*`` tree),
``imagenet`` (its preset), ``cifar100``, ``fashion_mnist``, ``synthetic``.
``num_classes`` always comes from the dataset.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from . import transforms
from .datasets import (
    CIFAR100,
    FASHION_MNIST_DIRS,
    DatasetNotFoundError,
    FashionMNIST,
    ImageFolderDataset,
    SyntheticDataset,
    cifar_transform,
    fashion_mnist_transform,
    imagenet_transform,
    synthetic_transform,
)
from .sampler import ResumableSampler, SeededDataset, sample_seed

if TYPE_CHECKING:
    from ..engine.config import DataConfig

__all__ = [
    "CIFAR100",
    "FASHION_MNIST_DIRS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DatasetSpec",
    "FashionMNIST",
    "ImageFolderDataset",
    "ResumableSampler",
    "SeededDataset",
    "SyntheticDataset",
    "build_dataset",
    "build_loader",
    "dataset_info",
    "list_datasets",
    "register_dataset",
    "sample_seed",
    "transforms",
]

SPLITS = ("train", "val")


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    in_chans: int
    img_size: int  # the side of the images the model sees


@dataclass(frozen=True)
class DatasetSpec:
    """How to build one dataset.

    ``info(cfg)`` returns :class:`DatasetInfo` cheaply (no images read; raises
    :class:`DatasetNotFoundError` for missing files); ``build(split, cfg)`` returns the
    raw dataset and its transform ``t(img, generator)``.
    """

    name: str
    info: Callable[[Any], DatasetInfo]
    build: Callable[[str, Any], tuple[Dataset, Callable]]
    options: frozenset[str] = frozenset()  # DataConfig fields only this dataset accepts


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in _DATASETS:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    _DATASETS[spec.name] = spec
    return spec


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def get_dataset_spec(name: str) -> DatasetSpec:
    try:
        return _DATASETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _DATASETS, n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown dataset {name!r}{hint} (valid: "
                         f"{', '.join(list_datasets())})") from None


def _check_split(split: str) -> bool:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split == "train"


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """``num_classes``, ``in_chans`` and image size of ``cfg.name`` without reading images."""
    return get_dataset_spec(cfg.name).info(cfg)


def build_dataset(name: str, split: str, cfg: DataConfig) -> Dataset:
    """The ``split`` (``"train"`` or ``"val"``) of dataset ``name``, transforms applied.

    The result is a :class:`SeededDataset` (indexed by ``(index, sample_seed)`` pairs of
    a :class:`ResumableSampler`), limited to ``cfg.train_samples``/``cfg.val_samples``
    images (a fixed random subset, seed ``cfg.subset_seed``) when those are set. It has
    ``num_classes`` and ``in_chans`` attributes.
    """
    spec = get_dataset_spec(name)
    raw, transform = spec.build(split, cfg)
    if _check_split(split) and getattr(cfg, "augment", True):
        from .augment import extend_train_transform  # auto-augment, random erasing

        transform = extend_train_transform(transform, cfg)
    limit = cfg.train_samples if _check_split(split) else cfg.val_samples
    if limit is not None and limit < len(raw) and name != "synthetic":
        g = torch.Generator().manual_seed(cfg.subset_seed)
        keep = torch.randperm(len(raw), generator=g)[:limit].sort().values.tolist()
        sub = Subset(raw, keep)
        for attr in ("num_classes", "in_chans", "classes"):
            setattr(sub, attr, getattr(raw, attr))
        raw = sub
    return SeededDataset(raw, transform)


def build_loader(dataset: Dataset, cfg: DataConfig, *, train: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1,
                 device: torch.device | str | None = None) -> DataLoader:
    """A :class:`DataLoader` over ``dataset`` with a :class:`ResumableSampler`.

    Batch sizes in ``cfg`` are *global*: each of the ``world_size`` processes loads
    ``batch_size // world_size``. Training shuffles (order a pure function of ``(seed,
    epoch)``; call ``loader.sampler.set_epoch``) and drops the last incomplete batch;
    evaluation shards without padding so every image is counted once.
    """
    global_bs = cfg.batch_size if train else (cfg.eval_batch_size or cfg.batch_size)
    if global_bs % world_size:
        raise ValueError(f"data.{'batch_size' if train else 'eval_batch_size'}={global_bs} "
                         f"(global) is not divisible by the world size {world_size}")
    bs = global_bs // world_size
    sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank, shuffle=train,
                               seed=seed, drop_last=False, pad=train)
    if train and len(sampler) < bs:
        raise ValueError(f"the training set has {len(sampler)} images per process, fewer than "
                         f"one batch of {bs}; lower data.batch_size")
    pin = torch.device(device).type == "cuda" if device is not None else False
    # A private generator: creating the loader's iterator must not consume the global
    # RNG (the model's point sampling uses it), or resuming would not be exact.
    return DataLoader(dataset, batch_size=bs, sampler=sampler, drop_last=train,
                      num_workers=cfg.workers, pin_memory=pin,
                      persistent_workers=False, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ registered datasets
def _synthetic_sizes(cfg: DataConfig) -> tuple[int, int]:
    return (cfg.train_samples or 512, cfg.val_samples or 256)


def _synthetic_info(cfg: DataConfig) -> DatasetInfo:
    return DatasetInfo(cfg.num_classes or 10, cfg.in_chans or 3, cfg.img_size or 32)


def _synthetic_build(split: str, cfg: DataConfig) -> tuple[Dataset, Callable]:
    train = _check_split(split)
    info = _synthetic_info(cfg)
    n = _synthetic_sizes(cfg)[0 if train else 1]
    # train and val share the class templates (seed 0) but not the samples
    ds = SyntheticDataset(n, info.num_classes, info.in_chans, info.img_size, seed=0)
    if not train:
        ds.seed = 1
    return ds, synthetic_transform(train, cfg.augment, cfg.img_size)


def _cifar_root(cfg: DataConfig) -> Path:
    return Path(cfg.root or "data")


def _cifar_info(cfg: DataConfig) -> DatasetInfo:
    folder = _cifar_root(cfg) / CIFAR100.base_folder
    if not cfg.download and not (folder / "train").is_file():
        raise DatasetNotFoundError(
            f"CIFAR-100 not found: expected {folder}/train and {folder}/test (torchvision's "
            "format). Download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and "
            f"extract it into {_cifar_root(cfg)}, or set data.download: true when online."
        )
    return DatasetInfo(100, 3, cfg.img_size or 32)


def _cifar_build(split: str, cfg: DataConfig) -> tuple[Dataset, Callable]:
    train = _check_split(split)
    ds = CIFAR100(_cifar_root(cfg), train=train, download=cfg.download)
    return ds, cifar_transform(train, cfg.augment, cfg.img_size)


def _folder_root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise ValueError(f"data.root is required for {cfg.name}: a folder with train/ and val/ "
                         "sub-folders, one folder of images per class")
    return Path(cfg.root)


def _folder_classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def _folder_info(cfg: DataConfig) -> DatasetInfo:
    """``imagefolder`` (and its preset ``imagenet``): ``root/{train,val}/<class>/<image>``."""
    root = _folder_root(cfg)
    example = ("<wnid>/*.JPEG" if cfg.name == "imagenet" else "<class>/*.jpg")
    for split in SPLITS:
        if not (root / split).is_dir():
            what = "ImageNet" if cfg.name == "imagenet" else "image folder"
            raise DatasetNotFoundError(
                f"{what} not found: expected {root / split} with one sub-folder per class "
                f"({root}/train/{example} and {root}/val/{example}; torchvision's "
                "ImageFolder layout)")
    classes = _folder_classes(root / "train")
    if not classes:
        raise DatasetNotFoundError(f"no class folders in {root / 'train'}")
    val_classes = _folder_classes(root / "val")
    if val_classes != classes:
        # ImageFolder numbers classes by sorted folder name per split: different folders
        # would silently give the same label to different classes
        only_t = sorted(set(classes) - set(val_classes))
        only_v = sorted(set(val_classes) - set(classes))
        raise DatasetNotFoundError(
            f"{root}: train/ and val/ must hold the same class folders (only in train: "
            f"{only_t[:5] or 'none'}; only in val: {only_v[:5] or 'none'})")
    return DatasetInfo(len(classes), 3, cfg.img_size or 224)


def _folder_build(split: str, cfg: DataConfig) -> tuple[Dataset, Callable]:
    train = _check_split(split)
    ds = ImageFolderDataset(_folder_root(cfg), split)
    return ds, imagenet_transform(train, cfg.augment, cfg.img_size, cfg.resize,
                                  cfg.square_resize)


def _fmnist_info(cfg: DataConfig) -> DatasetInfo:
    if not cfg.download:
        FashionMNIST.locate(cfg.root, train=True)
    return DatasetInfo(10, 1, cfg.img_size or 28)


def _fmnist_build(split: str, cfg: DataConfig) -> tuple[Dataset, Callable]:
    train = _check_split(split)
    ds = FashionMNIST(cfg.root, train=train, download=cfg.download)
    return ds, fashion_mnist_transform(train, cfg.augment, cfg.img_size)


register_dataset(DatasetSpec("synthetic", _synthetic_info, _synthetic_build,
                             frozenset({"num_classes", "in_chans"})))
register_dataset(DatasetSpec("cifar100", _cifar_info, _cifar_build))
# any train/<class>/*, val/<class>/* tree; `imagenet` is the same reader (a preset name
# whose messages speak of ImageNet and whose recipes set ImageNet's sizes)
register_dataset(DatasetSpec("imagefolder", _folder_info, _folder_build,
                             frozenset({"resize", "square_resize"})))
register_dataset(DatasetSpec("imagenet", _folder_info, _folder_build,
                             frozenset({"resize", "square_resize"})))
register_dataset(DatasetSpec("fashion_mnist", _fmnist_info, _fmnist_build))

