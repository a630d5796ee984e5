"""Cluttered Fashion-MNIST: each garment at a random position and scale on a larger canvas.

A regime where *local* features matter (issue 16): on plain 28×28 Fashion-MNIST the
garment fills the image and the later stages of a CIFAR-style ResNet have fewer output
positions than A²D²C samples, so point sampling is inactive there. Here every image is
a ``canvas × canvas`` (default 64×64) black canvas holding

* ``distractors`` patches (default 6) of ``patch × patch`` pixels (default 9), each cut
  from a random position of a random *other* garment of the same split and pasted at a
  random position (the "cluttered MNIST" construction of Mnih et al., 2014), then
* the garment itself, resized (bilinear, antialiased) by a factor drawn uniformly from
  ``scale`` (default 0.75–1.5, i.e. 21–42 pixels) and pasted at a uniform random
  position where it fits, composited by the pixel-wise maximum.

The label is the garment's. Every image is a pure function of ``(seed, split, index)``
(one ``numpy`` generator per image), so the first ``n`` images do not depend on how many
are generated. The result is written in Fashion-MNIST's own IDX layout (uncompressed,
the same file names), so :class:`~a2d2c.data.FashionMNIST` reads it, plus
``meta.json`` (the generation arguments and the training images' mean and std)::

    python -m a2d2c.data.cluttered --out data/cluttered_fashion_mnist --train 10000 --test 2000

and the dataset ``cluttered_fashion_mnist`` (``data.root`` = that folder) trains on it.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import _FMNIST_FILES, DatasetNotFoundError, FashionMNIST, _read_idx

__all__ = ["DEFAULT_ROOT", "clutter", "load_meta", "write_cluttered_fashion_mnist"]

#: where ``cluttered_fashion_mnist`` is looked for when ``data.root`` is not set
DEFAULT_ROOT = Path("data") / "cluttered_fashion_mnist"
_SPLIT_ID = {True: 0, False: 1}


def clutter(images: np.ndarray, index: int, *, seed: int, train: bool, canvas: int = 64,
            scale: Sequence[float] = (0.75, 1.5), distractors: int = 6,
            patch: int = 9) -> np.ndarray:
    """The cluttered version of ``images[index]`` (``images``: uint8 ``(N, h, w)``).

    Returns a uint8 ``(canvas, canvas)`` array; deterministic in ``(seed, train, index)``.
    """
    n, h, w = images.shape
    lo, hi = float(scale[0]), float(scale[1])
    if not 0 < lo <= hi:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale!r}")
    size_max = round(max(h, w) * hi)
    if size_max > canvas:
        raise ValueError(f"a garment scaled by {hi} ({size_max} px) does not fit a {canvas}-px "
                         "canvas; lower the scale or enlarge the canvas")
    if not 1 <= patch <= min(h, w):
        raise ValueError(f"patch must be in [1, {min(h, w)}], got {patch}")
    rng = np.random.default_rng([seed, _SPLIT_ID[train], index])
    out = np.zeros((canvas, canvas), dtype=np.uint8)
    for _ in range(distractors):
        other = int(rng.integers(n - 1)) if n > 1 else 0
        other += other >= index and n > 1  # any image but this one
        py, px = rng.integers(0, h - patch + 1), rng.integers(0, w - patch + 1)
        cy, cx = rng.integers(0, canvas - patch + 1), rng.integers(0, canvas - patch + 1)
        region = out[cy:cy + patch, cx:cx + patch]
        np.maximum(region, images[other, py:py + patch, px:px + patch], out=region)
    s = rng.uniform(lo, hi)
    gh, gw = max(1, round(h * s)), max(1, round(w * s))
    garment = torch.from_numpy(images[index].astype(np.float32))[None, None]
    garment = F.interpolate(garment, size=(gh, gw), mode="bilinear", align_corners=False,
                            antialias=True)
    garment = garment[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()
    y, x = rng.integers(0, canvas - gh + 1), rng.integers(0, canvas - gw + 1)
    region = out[y:y + gh, x:x + gw]
    np.maximum(region, garment, out=region)
    return out


def _write_idx(path: Path, data: np.ndarray) -> None:
    """An unsigned-byte IDX file (magic 0x00000800 + ndim, big-endian dims, raw bytes)."""
    header = bytes([0, 0, 0x08, data.ndim]) + b"".join(int(d).to_bytes(4, "big")
                                                       for d in data.shape)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(np.ascontiguousarray(data, dtype=np.uint8).tobytes())
    os.replace(tmp, path)


def write_cluttered_fashion_mnist(out: str | os.PathLike, *,
                                  source: str | os.PathLike | None = None,
                                  num_train: int | None = None, num_test: int | None = None,
                                  seed: int = 0, canvas: int = 64,
                                  scale: Sequence[float] = (0.75, 1.5), distractors: int = 6,
                                  patch: int = 9) -> Path:
    """Generate cluttered Fashion-MNIST into ``out`` (IDX files + ``meta.json``).

    ``source``: the Fashion-MNIST folder (default: where :class:`FashionMNIST` finds it);
    ``num_train``/``num_test``: the first that many images of each split (default all).
    Returns ``out``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    args = dict(seed=seed, canvas=canvas, scale=[float(scale[0]), float(scale[1])],
                distractors=distractors, patch=patch)
    stats: dict[str, float] = {}
    counts: dict[str, int] = {}
    for train, limit in ((True, num_train), (False, num_test)):
        img_path, lbl_path = FashionMNIST.locate(source, train=train)
        images = _read_idx(img_path)
        labels = _read_idx(lbl_path)
        n = len(images) if limit is None else min(int(limit), len(images))
        if n < 1:
            raise ValueError(f"num_{'train' if train else 'test'} must be >= 1, got {limit}")
        # distractors come from the whole split, so a subset is a prefix of the full set
        cl = np.stack([clutter(images, i, train=train, **args) for i in range(n)])
        img_name, lbl_name = _FMNIST_FILES[train]
        _write_idx(out / img_name, cl)
        _write_idx(out / lbl_name, labels[:n])
        counts["train" if train else "test"] = n
        if train:
            pixels = cl.astype(np.float64) / 255
            stats = {"mean": float(pixels.mean()), "std": float(pixels.std())}
    meta = {"dataset": "cluttered_fashion_mnist", **args, **counts, **stats}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


def load_meta(root: str | os.PathLike | None) -> dict:
    """``meta.json`` of a generated folder, or :class:`DatasetNotFoundError` saying how."""
    folder = Path(root) if root else DEFAULT_ROOT
    path = folder / "meta.json"
    if not path.is_file():
        raise DatasetNotFoundError(
            f"cluttered Fashion-MNIST not found: expected {path}; generate it with "
            f"`python -m a2d2c.data.cluttered --out {folder}` (deterministic from --seed)")
    return json.loads(path.read_text())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m a2d2c.data.cluttered",
                                description="generate cluttered Fashion-MNIST (IDX layout)")
    p.add_argument("--out", default=str(DEFAULT_ROOT), help="output folder")
    p.add_argument("--source", default=None, help="Fashion-MNIST folder (default: found)")
    p.add_argument("--train", type=int, default=None, help="training images (default all)")
    p.add_argument("--test", type=int, default=None, help="test images (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--canvas", type=int, default=64)
    p.add_argument("--scale", type=float, nargs=2, default=(0.75, 1.5))
    p.add_argument("--distractors", type=int, default=6)
    p.add_argument("--patch", type=int, default=9)
    a = p.parse_args(argv)
    out = write_cluttered_fashion_mnist(a.out, source=a.source, num_train=a.train,
                                        num_test=a.test, seed=a.seed, canvas=a.canvas,
                                        scale=a.scale, distractors=a.distractors,
                                        patch=a.patch)
    print(f"wrote {out} ({load_meta(out)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
