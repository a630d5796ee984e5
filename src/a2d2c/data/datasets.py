"""The datasets: CIFAR-100, ImageNet (ImageFolder), Fashion-MNIST and a synthetic one.

Each builder returns a *raw* dataset — ``(image, target)`` with the image as a uint8
``(C, H, W)`` tensor or a PIL image — plus the transform for the split; the loader
(:func:`a2d2c.data.build_loader`) applies it with a per-sample generator. Missing
files raise :class:`DatasetNotFoundError` saying where the data is expected and how to
get it.
"""

from __future__ import annotations

import gzip
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from . import transforms as T

__all__ = [
    "CIFAR100",
    "FASHION_MNIST_DIRS",
    "DatasetNotFoundError",
    "FashionMNIST",
    "ImageFolderDataset",
    "SyntheticDataset",
    "TensorImageDataset",
]

#: Where Fashion-MNIST is looked for when no root is given (Debian's dataset-fashion-mnist).
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message says where they were expected."""


class TensorImageDataset(Dataset):
    """In-memory uint8 images ``(N, C, H, W)`` with integer targets."""

    def __init__(self, images: Tensor, targets: Tensor, num_classes: int,
                 classes: list[str] | None = None) -> None:
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images, self.targets = images, targets.long()
        self.num_classes = int(num_classes)
        self.in_chans = int(images.shape[1])
        self.classes = classes or [str(i) for i in range(num_classes)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.targets[index])


# --------------------------------------------------------------------------- CIFAR-100
# The only globals CIFAR's pickles reference: a NumPy array (the ``data`` entry) is
# rebuilt from ``_reconstruct``, ``ndarray`` and ``dtype``; everything else is plain
# dicts, lists, strings and ints. Any other global (``os.system``, ``builtins.eval``, ...)
# would run code while unpickling, so a file that names one is refused.
_CIFAR_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
})


class _CifarUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`_CIFAR_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name} (CIFAR's files hold "
                                     "only NumPy arrays, lists, strings and numbers)")


def _unpickle(path: Path) -> dict[str, Any]:
    """A CIFAR data file, read with a restricted unpickler (no code can run)."""
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="latin1").load()
    except Exception as e:  # truncated, crafted or not a pickle at all
        raise ValueError(f"{path} is not a readable CIFAR-100 file ({type(e).__name__}: "
                         f"{str(e).strip()[:200]}); download and extract it again") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a CIFAR-100 file (holds a {type(obj).__name__}, "
                         "not a dict); download and extract it again")
    return obj


def _entry(obj: dict[str, Any], key: str, path: Path) -> Any:
    if key not in obj:
        raise ValueError(f"{path} is not a CIFAR-100 file (no {key!r} entry); download and "
                         "extract it again")
    return obj[key]


class CIFAR100(TensorImageDataset):
    """CIFAR-100 from torchvision's on-disk format: ``root/cifar-100-python/{train,test,meta}``.

    Each split file is a pickle with ``data`` (N × 3072 uint8, channel-major 32×32) and
    ``fine_labels``; ``meta`` holds ``fine_label_names``. ``download=True`` fetches it with
    torchvision when it is missing (needs internet).
    """

    base_folder = "cifar-100-python"

    def __init__(self, root: str | os.PathLike, train: bool = True, download: bool = False):
        folder = Path(root) / self.base_folder
        split_file = folder / ("train" if train else "test")
        if not split_file.is_file() and download:
            import torchvision

            torchvision.datasets.CIFAR100(str(root), train=train, download=True)
        if not split_file.is_file():
            raise DatasetNotFoundError(
                f"CIFAR-100 not found: expected {split_file} (torchvision's format: "
                f"{folder}/{{train,test,meta}}). Download it from "
                "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it "
                f"into {Path(root)}, or set data.download: true when online."
            )
        entry = _unpickle(split_file)
        try:
            data = np.asarray(_entry(entry, "data", split_file), dtype=np.uint8)
            data = data.reshape(-1, 3, 32, 32)
            targets = torch.as_tensor(_entry(entry, "fine_labels", split_file),
                                      dtype=torch.long)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{split_file} is not a CIFAR-100 file ({e}); download and "
                             "extract it again") from None
        classes = None
        meta = folder / "meta"
        if meta.is_file():
            classes = list(_entry(_unpickle(meta), "fine_label_names", meta))
        super().__init__(torch.from_numpy(data.copy()), targets, 100, classes)


# ------------------------------------------------------------------------ Fashion-MNIST
_FMNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # a truncated or damaged .gz
        raise ValueError(f"{path} is corrupt ({type(e).__name__}: {e}); download it "
                         "again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: {data.size} bytes of data for shape {dims}")
    return data.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


class FashionMNIST(TensorImageDataset):
    """Fashion-MNIST from IDX files (gzipped or not).

    Looked for in ``root`` if given (also ``root/FashionMNIST/raw``, torchvision's
    layout), else in Debian's ``/usr/share/datasets/fashion-mnist`` and then
    ``./data/FashionMNIST/raw``; with
    ``download=True`` torchvision fetches it into ``root`` (default ``./data``).
    """

    @staticmethod
    def _candidates(root: str | os.PathLike | None) -> list[Path]:
        if root:
            return [Path(root), Path(root) / "FashionMNIST" / "raw"]
        # Debian's package, then where scripts/setup.sh downloads it (data/, from the repo)
        return [Path(d) for d in FASHION_MNIST_DIRS] + [Path("data") / "FashionMNIST" / "raw"]

    @classmethod
    def locate(cls, root: str | os.PathLike | None, train: bool = True) -> tuple[Path, Path]:
        """The (images, labels) IDX files of a split, or :class:`DatasetNotFoundError`."""
        img_name, lbl_name = _FMNIST_FILES[train]
        candidates = cls._candidates(root)
        for folder in candidates:
            img, lbl = _find_idx(folder, img_name), _find_idx(folder, lbl_name)
            if img and lbl:
                return img, lbl
        where = " or ".join(str(c) for c in candidates)
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found: expected {img_name}.gz and {lbl_name}.gz in {where}. "
            "Install Debian's dataset-fashion-mnist package (bash scripts/setup.sh does), "
            "point data.root at a folder holding the IDX files, or set data.download: true "
            "when online."
        )

    def __init__(self, root: str | os.PathLike | None = None, train: bool = True,
                 download: bool = False) -> None:
        try:
            found = self.locate(root, train)
        except DatasetNotFoundError:
            if not download:
                raise
            import torchvision

            torchvision.datasets.FashionMNIST(str(root or "data"), train=train, download=True)
            found = self.locate(Path(root or "data"), train)
        images = _read_idx(found[0])
        labels = _read_idx(found[1])
        super().__init__(torch.from_numpy(images.copy()).unsqueeze(1),
                         torch.from_numpy(labels.astype(np.int64)), 10, FASHION_MNIST_CLASSES)


# ---------------------------------------------------------------------------- ImageNet
class ImageFolderDataset(Dataset):
    """ImageNet-style ``root/<split>/<class>/<image>`` folders (torchvision's ImageFolder)."""

    def __init__(self, root: str | os.PathLike, split: str) -> None:
        from torchvision.datasets import ImageFolder

        folder = Path(root) / split
        if not folder.is_dir():
            raise DatasetNotFoundError(
                f"image folder not found: expected {folder} with one sub-folder per class "
                f"(ImageNet layout: {Path(root)}/train/<wnid>/*.JPEG and "
                f"{Path(root)}/val/<wnid>/*.JPEG)"
            )
        try:
            self.folder = ImageFolder(str(folder))
        except (FileNotFoundError, RuntimeError) as e:
            raise DatasetNotFoundError(f"no images found under {folder}: {e}") from None
        self.classes = list(self.folder.classes)
        self.num_classes = len(self.classes)
        self.in_chans = 3

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.folder.samples[index]
        return self.folder.loader(path), int(target)


# --------------------------------------------------------------------------- synthetic
class SyntheticDataset(Dataset):
    """Learnable random images: a fixed per-class template plus per-sample noise.

    Sample ``i`` is a pure function of ``(seed, i)``; classes are balanced
    (``target = i % num_classes``). For smoke tests, benchmarks and recipe dry-runs.
    """

    def __init__(self, num_samples: int, num_classes: int, in_chans: int = 3,
                 img_size: int = 32, seed: int = 0, noise: float = 0.5) -> None:
        self.num_samples, self.num_classes = int(num_samples), int(num_classes)
        self.in_chans, self.img_size, self.seed = int(in_chans), int(img_size), int(seed)
        self.noise = float(noise)
        g = torch.Generator().manual_seed(seed)
        self.templates = torch.rand(num_classes, in_chans, img_size, img_size, generator=g)
        self.classes = [f"class_{i}" for i in range(num_classes)]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        target = index % self.num_classes
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index + 1)
        img = self.templates[target] + self.noise * torch.randn(self.templates.shape[1:],
                                                                 generator=g)
        return (img.clamp(0, 1) * 255).round().to(torch.uint8), target


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]
    std: tuple[float, ...]


def cifar_transform(train: bool, augment: bool, img_size: int | None) -> T.Compose:
    ts: list = []
    if img_size and img_size != 32:
        ts.append(T.Resize(img_size, square=True))
    size = img_size or 32
    if train and augment:
        ts += [T.RandomCrop(size, padding=size // 8), T.RandomHorizontalFlip()]
    return T.Compose([*ts, T.ToTensor(), T.Normalize(CIFAR100_MEAN, CIFAR100_STD)])


def imagenet_transform(train: bool, augment: bool, img_size: int | None,
                       resize: int | None, square_resize: bool) -> T.Compose:
    crop = img_size or 224
    resize = resize or round(crop * 256 / 224)
    if train and augment:
        ts = [T.Resize(resize, square_resize), T.RandomCrop(crop), T.RandomHorizontalFlip()]
    else:
        ts = [T.Resize(resize, square_resize), T.CenterCrop(crop)]
    return T.Compose([*ts, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def fashion_mnist_transform(train: bool, augment: bool, img_size: int | None) -> T.Compose:
    ts: list = []
    if img_size and img_size != 28:
        ts.append(T.Resize(img_size, square=True))
    size = img_size or 28
    if train and augment:
        ts += [T.RandomCrop(size, padding=2), T.RandomHorizontalFlip()]
    return T.Compose([*ts, T.ToTensor(), T.Normalize(FASHION_MNIST_MEAN, FASHION_MNIST_STD)])


def synthetic_transform(train: bool, augment: bool, img_size: int | None) -> T.Compose:
    ts: list = []
    if train and augment:
        ts.append(T.RandomHorizontalFlip())
    return T.Compose([*ts, T.ToTensor(), T.Normalize((0.5,), (0.25,))])
