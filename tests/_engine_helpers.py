"""Shared helpers of the engine tests: tiny datasets in the real on-disk formats."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from a2d2c.engine import Config, config_from_dict


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` (BINSTRING opcodes), like the original files.

    The CIFAR-100 files were written by Python 2's cPickle: their keys and the arrays'
    raw buffers are py2 strings, which Python 3 reads back as ``str`` with
    ``encoding="latin1"`` (what torchvision does).
    """

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _dump_py2(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def write_cifar100(root: Path, n_train: int = 24, n_test: int = 12, seed: int = 0
                   ) -> dict[str, np.ndarray]:
    """CIFAR-100 exactly as torchvision stores it: root/cifar-100-python/{train,test,meta}.

    Pickles (protocol 2, byte-string keys as produced by Python 2's cPickle) with
    ``data`` (N x 3072 uint8: the 1024 red, then green, then blue values, rows first),
    ``fine_labels``, ``coarse_labels``, ``filenames``, ``batch_label``; ``meta`` holds
    the label names. Returns the arrays written.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, size=n).tolist()
        entry = {b"batch_label": f"{split}ing batch 1 of 1".encode(),
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)],
                 b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine],
                 b"data": data}
        _dump_py2(entry, folder / split)
        out[split] = data
        out[split + "_labels"] = np.asarray(fine)
    meta = {b"fine_label_names": [f"class{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}
    _dump_py2(meta, folder / "meta")
    return out


def write_image_folder(root: Path, classes: tuple[str, ...] = ("n01", "n02", "n03"),
                       per_class: int = 3, size: tuple[int, int] = (40, 30), seed: int = 0
                       ) -> None:
    """ImageNet layout: root/{train,val}/<class>/<image>.JPEG (RGB, width x height)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{c}_{i}.JPEG", format="JPEG", quality=95)


def tiny_model_cfg(num_points: int = 8) -> dict[str, Any]:
    """A small A2D2C ResNet-18 (CIFAR stem, widths 8..64) with active point sampling."""
    return {"name": "resnet18_a2d2c",
            "kwargs": {"stem": "cifar", "width_mult": 0.125, "num_kernels": 2,
                       "conv_kwargs": {"num_points": num_points}}}


def tiny_config(out: Path, **sections: dict[str, Any]) -> Config:
    """Synthetic 10-class 8x8 RGB data, the tiny model, 2 epochs of 4 steps, CPU."""
    base: dict[str, Any] = {
        "model": tiny_model_cfg(),
        "data": {"name": "synthetic", "img_size": 8, "train_samples": 32, "val_samples": 16,
                 "batch_size": 8, "num_classes": 10},
        "optim": {"lr": 0.05},
        "schedule": {"name": "step", "milestones": [1]},
        "temperature": {"anneal_epochs": 1.5},
        "train": {"epochs": 2, "output_dir": str(out), "device": "cpu", "progress": False},
    }
    for sec, values in sections.items():
        base[sec] = {**base.get(sec, {}), **values}
    return config_from_dict(base)
