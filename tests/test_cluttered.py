"""Cluttered Fashion-MNIST (issue 16): determinism, IDX layout, garment placement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from a2d2c.data import build_dataset, dataset_info
from a2d2c.data.cluttered import clutter, write_cluttered_fashion_mnist
from a2d2c.data.datasets import DatasetNotFoundError
from a2d2c.engine.config import DataConfig


def _write_source(folder: Path, n: int = 12) -> np.ndarray:
    """A fake Fashion-MNIST: image i is a constant 28×28 square of value 20 + 15·i."""
    folder.mkdir(parents=True, exist_ok=True)
    images = np.stack([np.full((28, 28), 20 + 15 * i, np.uint8) for i in range(n)])
    labels = (np.arange(n) % 10).astype(np.uint8)
    for prefix in ("train", "t10k"):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
            bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape)
            + images.tobytes())
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
            bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + labels.tobytes())
    return images


def _has_square(img: np.ndarray, side: int, value: int) -> bool:
    # integral image of the pixels >= value: a side x side window is all True iff its sum
    # is side^2
    ii = np.pad((img >= value).astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    win = ii[side:, side:] - ii[:-side, side:] - ii[side:, :-side] + ii[:-side, :-side]
    return bool((win == side * side).any())


def test_idx_layout_and_determinism(tmp_path: Path) -> None:
    _write_source(tmp_path / "src")
    a = write_cluttered_fashion_mnist(tmp_path / "a", source=tmp_path / "src", num_train=5,
                                      num_test=3, seed=7)
    b = write_cluttered_fashion_mnist(tmp_path / "b", source=tmp_path / "src", num_train=8,
                                      num_test=3, seed=7)
    c = write_cluttered_fashion_mnist(tmp_path / "c", source=tmp_path / "src", num_train=5,
                                      num_test=3, seed=8)
    raw = (a / "train-images-idx3-ubyte").read_bytes()
    # IDX: magic 0x00000803 (unsigned byte, 3 dims), big-endian dims, then the pixels
    assert raw[:4] == bytes([0, 0, 8, 3])
    assert [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(3)] == [5, 64, 64]
    assert len(raw) == 16 + 5 * 64 * 64
    lbl = (a / "train-labels-idx1-ubyte").read_bytes()
    assert lbl[:8] == bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big")
    assert list(lbl[8:]) == [0, 1, 2, 3, 4]  # the garments' own labels, in order
    # the same seed gives the same images, and a larger set starts with the smaller one
    raw_b = (b / "train-images-idx3-ubyte").read_bytes()
    assert raw_b[16:16 + 5 * 4096] == raw[16:]
    assert (c / "train-images-idx3-ubyte").read_bytes()[16:] != raw[16:]
    meta = json.loads((a / "meta.json").read_text())
    assert (meta["canvas"], meta["train"], meta["test"], meta["seed"]) == (64, 5, 3, 7)
    pixels = np.frombuffer(raw[16:], np.uint8) / 255
    assert meta["mean"] == pytest.approx(pixels.mean()) and meta["std"] == pytest.approx(
        pixels.std())


def test_garment_is_placed_whole_with_distractors(tmp_path: Path) -> None:
    images = _write_source(tmp_path / "src")
    for i in range(len(images)):
        img = clutter(images, i, seed=0, train=True, scale=(1.0, 1.0), distractors=6, patch=9)
        assert img.shape == (64, 64) and img.dtype == np.uint8
        v = int(images[i, 0, 0])
        # the 28x28 garment is there (max-composited, so nothing in it is below v) ...
        assert _has_square(img, 28, v)
        # ... and so are distractors: pixels outside any garment-valued square, of another
        # image's value (6 patches of 9x9 cannot form a 21x21 square on their own)
        others = {int(u) for u in np.unique(img)} - {0, v}
        assert others, "no distractor pixels"
    # scaling: with scale (1.5, 1.5) the garment is 42x42
    img = clutter(images, 3, seed=0, train=True, scale=(1.5, 1.5), distractors=0)
    assert _has_square(img, 42, int(images[3, 0, 0]))
    assert (img > 0).sum() == 42 * 42


def test_dataset_registry_and_errors(tmp_path: Path) -> None:
    _write_source(tmp_path / "src")
    root = write_cluttered_fashion_mnist(tmp_path / "c", source=tmp_path / "src", num_train=6,
                                         num_test=4)
    cfg = DataConfig(name="cluttered_fashion_mnist", root=str(root), augment=False)
    info = dataset_info(cfg)
    assert (info.num_classes, info.in_chans, info.img_size) == (10, 1, 64)
    ds = build_dataset("cluttered_fashion_mnist", "val", cfg)
    assert len(ds) == 4
    x, y = ds[(0, 0)]
    assert x.shape == (1, 64, 64) and x.dtype == torch.float32 and int(y) == 0
    with pytest.raises(DatasetNotFoundError, match=r"python -m a2d2c\.data\.cluttered"):
        dataset_info(DataConfig(name="cluttered_fashion_mnist", root=str(tmp_path / "none")))
    with pytest.raises(ValueError, match="does not fit"):
        clutter(np.zeros((2, 28, 28), np.uint8), 0, seed=0, train=True, canvas=32)
