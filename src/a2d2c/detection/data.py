"""COCO-format instance data for Mask R-CNN (images, boxes, labels, masks).

Layout (COCO 2017)::

    root/annotations/instances_{train2017,val2017}.json
    root/train2017/*.jpg
    root/val2017/*.jpg

Category ids (COCO's run 1..90 with gaps) map to contiguous labels ``1..C``; label 0 is
background, so the detector has ``C + 1`` classes. Training drops crowd annotations,
degenerate boxes and images left without objects (as mmdetection and torchvision's
references do); evaluation keeps every image.
"""

from __future__ import annotations

import contextlib
import io
import math
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler
from torchvision.io import ImageReadMode, decode_image, read_file

__all__ = ["CocoInstances", "GroupedBatchSampler", "coco_paths", "collate"]


def coco_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """``(annotation file, image folder)`` of ``split`` in the COCO layout under ``root``."""
    root = Path(root)
    ann = root / "annotations" / f"instances_{split}.json"
    images = root / split
    if not ann.is_file():
        raise FileNotFoundError(
            f"annotation file {str(ann)!r} not found; expected the COCO 2017 layout "
            f"root/annotations/instances_{{train2017,val2017}}.json (data.root={str(root)!r})"
        )
    if not images.is_dir():
        raise FileNotFoundError(f"image folder {str(images)!r} not found (data.root="
                                f"{str(root)!r}, split={split!r})")
    return ann, images


class CocoInstances(Dataset):
    """A COCO instances split: ``(image, target)`` pairs for torchvision's ``MaskRCNN``.

    ``image`` is a float tensor ``(3, H, W)`` in ``[0, 1]`` (normalisation happens inside
    the detector); ``target`` has ``boxes`` (xyxy, float), ``labels`` (contiguous,
    int64), ``masks`` (uint8 ``(N, H, W)``), ``image_id``, ``area`` and ``iscrowd``.
    """

    def __init__(self, root: str | Path, split: str, *, train: bool,
                 hflip_prob: float = 0.5) -> None:
        from .._optional import require

        COCO = require("pycocotools.coco", "COCO-format data").COCO

        ann_file, self.image_dir = coco_paths(root, split)
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(str(ann_file))
        self.train = train
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
        self.hflip_prob = hflip_prob if train else 0.0
        cat_ids = sorted(self.coco.getCatIds())
        if not cat_ids:
            raise ValueError(f"{str(ann_file)!r} defines no categories")
        self.cat_to_label = {c: i + 1 for i, c in enumerate(cat_ids)}
        self.label_to_cat = {i + 1: c for i, c in enumerate(cat_ids)}
        self.class_names = [self.coco.cats[c]["name"] for c in cat_ids]
        ids = sorted(self.coco.imgs)
        if train:
            ids = [i for i in ids if self._annotations(i)]
        self.ids = ids

    @property
    def num_classes(self) -> int:
        """Object classes plus background."""
        return len(self.cat_to_label) + 1

    def _annotations(self, image_id: int) -> list[dict[str, Any]]:
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
        keep = []
        for ann in anns:
            if self.train and ann.get("iscrowd", 0):
                continue
            _x, _y, w, h = ann["bbox"]
            if w < 1 or h < 1:
                continue
            keep.append(ann)
        return keep

    def __len__(self) -> int:
        return len(self.ids)

    def aspect_ratios(self) -> list[float]:
        return [self.coco.imgs[i]["width"] / self.coco.imgs[i]["height"] for i in self.ids]

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = decode_image(read_file(str(self.image_dir / info["file_name"])),
                             mode=ImageReadMode.RGB)
        height, width = image.shape[-2:]
        anns = self._annotations(image_id)
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        anns = [a for a, v in zip(anns, valid.tolist(), strict=True) if v]
        boxes = boxes[valid]
        if anns:
            masks = torch.from_numpy(np.stack([self.coco.annToMask(a) for a in anns]))
        else:
            masks = torch.zeros(0, height, width, dtype=torch.uint8)
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self.cat_to_label[a["category_id"]] for a in anns],
                                   dtype=torch.int64),
            "masks": masks,
            "image_id": torch.tensor(image_id),
            "area": torch.tensor([float(a["area"]) for a in anns], dtype=torch.float32),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns],
                                    dtype=torch.int64),
        }
        img = image.float().div_(255)
        if self.hflip_prob and random.random() < self.hflip_prob:
            img = img.flip(-1)
            target["masks"] = target["masks"].flip(-1)
            b = target["boxes"].clone()
            b[:, 0], b[:, 2] = width - target["boxes"][:, 2], width - target["boxes"][:, 0]
            target["boxes"] = b
        return img, target


def collate(batch: Sequence[tuple[Tensor, dict[str, Tensor]]]) -> tuple[list, list]:
    """Detection batches are lists (images differ in size; the model pads them)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches whose images share an aspect-ratio group (landscape / portrait).

    Padding a portrait and a landscape image to one tensor wastes half of it; grouping
    as torchvision's references and mmdetection do keeps batches compact. Indices come
    from ``sampler`` (e.g. a ``DistributedSampler``), so sharding and shuffling stay
    its job. The images left over in the groups at the end are batched together, so an
    epoch has exactly ``ceil(len(sampler) / batch_size)`` batches: the same on every
    process under DDP (a rank with one batch more would wait forever in all-reduce).
    """

    def __init__(self, sampler: Sampler[int], aspect_ratios: Sequence[float],
                 batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.groups = [0 if r >= 1.0 else 1 for r in aspect_ratios]
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        buckets: dict[int, list[int]] = defaultdict(list)
        for idx in self.sampler:
            bucket = buckets[self.groups[idx]]
            bucket.append(idx)
            if len(bucket) == self.batch_size:
                yield list(bucket)
                bucket.clear()
        rest = [idx for bucket in buckets.values() for idx in bucket]
        for start in range(0, len(rest), self.batch_size):
            yield rest[start:start + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)  # type: ignore[arg-type]
