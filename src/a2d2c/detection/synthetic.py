"""A small COCO-format dataset of simple shapes, written to disk (tests, smoke runs).

Each image is uniform noise with 1–4 filled shapes of two classes, ``"rectangle"``
(category id 1) and ``"ellipse"`` (category id 3: the ids have a gap, like COCO's, so
the label ↔ category mapping is exercised). Every object has a polygon segmentation
(the rectangle's 4 corners, 24 points on the ellipse), the box of that polygon and the
polygon's area; the shape is drawn from the same polygon, so masks and pixels agree.
Objects overlap by at most ``max_overlap`` IoU. The layout is COCO 2017's::

    root/annotations/instances_{train,val}2017.json, root/{train,val}2017/*.png
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

__all__ = ["SHAPE_CATEGORIES", "make_shapes_dataset"]

SHAPE_CATEGORIES = ({"id": 1, "name": "rectangle", "supercategory": "shape"},
                    {"id": 3, "name": "ellipse", "supercategory": "shape"})


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def _polygon(kind: str, cx: float, cy: float, w: float, h: float) -> list[float]:
    if kind == "rectangle":
        x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    else:
        pts = [(cx + w / 2 * math.cos(t), cy + h / 2 * math.sin(t))
               for t in (2 * math.pi * i / 24 for i in range(24))]
    return [round(v, 2) for p in pts for v in p]


def _write_split(root: Path, split: str, num_images: int, image_size: int,
                 rng: np.random.Generator, max_objects: int, max_overlap: float,
                 first_ann_id: int) -> int:
    from PIL import Image, ImageDraw

    from .._optional import require

    mask_utils = require("pycocotools.mask", "the shapes dataset")

    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = first_ann_id
    lo, hi = max(6, image_size // 10), max(12, image_size // 2)
    for image_id in range(1, num_images + 1):
        noise = rng.integers(0, 256, size=(image_size, image_size, 3), dtype=np.uint8)
        img = Image.fromarray((noise // 2 + 64).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        boxes: list[tuple[float, ...]] = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _attempt in range(20):
                w, h = (float(v) for v in rng.uniform(lo, hi, size=2))
                cx = float(rng.uniform(w / 2, image_size - w / 2))
                cy = float(rng.uniform(h / 2, image_size - h / 2))
                kind = "rectangle" if rng.random() < 0.5 else "ellipse"
                poly = _polygon(kind, cx, cy, w, h)
                xs, ys = poly[0::2], poly[1::2]
                box = (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
                if all(_iou(box, b) <= max_overlap for b in boxes):
                    break
            else:
                continue
            boxes.append(box)
            color = tuple(int(c) for c in rng.integers(0, 256, size=3))
            draw.polygon(list(zip(xs, ys, strict=True)), fill=color)
            rle = mask_utils.frPyObjects([poly], image_size, image_size)
            area = float(mask_utils.area(mask_utils.merge(rle)))
            annotations.append({
                "id": ann_id, "image_id": image_id,
                "category_id": SHAPE_CATEGORIES[0 if kind == "rectangle" else 1]["id"],
                "segmentation": [poly], "area": area,
                "bbox": [round(v, 2) for v in box], "iscrowd": 0,
            })
            ann_id += 1
        name = f"{image_id:06d}.png"
        img.save(image_dir / name)
        images.append({"id": image_id, "file_name": name, "width": image_size,
                       "height": image_size})
    ann_dir = root / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    (ann_dir / f"instances_{split}.json").write_text(json.dumps({
        "info": {"description": "a2d2c synthetic shapes"}, "licenses": [],
        "images": images, "annotations": annotations, "categories": list(SHAPE_CATEGORIES),
    }))
    return ann_id


def make_shapes_dataset(root: str | Path, *, num_train: int = 64, num_val: int = 16,
                        image_size: int = 128, max_objects: int = 3,
                        max_overlap: float = 0.1, seed: int = 0) -> Path:
    """Write the shapes dataset under ``root`` (COCO 2017 layout) and return ``root``."""
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    if num_train < 1 or num_val < 1 or max_objects < 1:
        raise ValueError(f"num_train, num_val and max_objects must be >= 1, got "
                         f"{num_train}, {num_val}, {max_objects}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    next_id = _write_split(root, "train2017", num_train, image_size, rng, max_objects,
                           max_overlap, 1)
    _write_split(root, "val2017", num_val, image_size, rng, max_objects, max_overlap, next_id)
    return root
