"""COCO evaluation with pycocotools: detector outputs → results → the six AP figures."""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["IOU_TYPES", "STAT_NAMES", "coco_evaluate", "format_stats", "to_coco_results"]

#: The first six numbers of ``COCOeval.stats`` (IoU=.50:.95 unless named; S/M/L by area).
STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APS", "APM", "APL")
IOU_TYPES: tuple[str, ...] = ("bbox", "segm")


def to_coco_results(
    outputs: Sequence[Mapping[str, Tensor]], image_ids: Sequence[int],
    label_to_cat: Mapping[int, int], *, mask_threshold: float = 0.5,
) -> dict[str, list[dict[str, Any]]]:
    """Convert ``MaskRCNN`` eval outputs (in original image coordinates) to COCO results.

    Returns ``{"bbox": [...], "segm": [...]}``: boxes as ``[x, y, w, h]``, masks binarised
    at ``mask_threshold`` and RLE-encoded; ``segm`` is empty when outputs carry no masks.
    """
    from .._optional import require

    mask_utils = require("pycocotools.mask", "COCO evaluation")

    results: dict[str, list[dict[str, Any]]] = {"bbox": [], "segm": []}
    for out, image_id in zip(outputs, image_ids, strict=True):
        boxes = out["boxes"].detach().float().cpu()
        if boxes.numel() == 0:
            continue
        xywh = boxes.clone()
        xywh[:, 2:] -= xywh[:, :2]
        scores = out["scores"].detach().float().cpu().tolist()
        cats = [label_to_cat[int(lab)] for lab in out["labels"].cpu().tolist()]
        for box, score, cat in zip(xywh.tolist(), scores, cats, strict=True):
            results["bbox"].append({"image_id": int(image_id), "category_id": cat,
                                    "bbox": [round(v, 3) for v in box], "score": score})
        if "masks" in out:
            masks = (out["masks"].detach()[:, 0] > mask_threshold).cpu().numpy()
            rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
            for rle, score, cat in zip(rles, scores, cats, strict=True):
                rle["counts"] = rle["counts"].decode("ascii")
                results["segm"].append({"image_id": int(image_id), "category_id": cat,
                                        "segmentation": rle, "score": score})
    return results


def coco_evaluate(coco_gt: Any, results: Mapping[str, list[dict[str, Any]]], *,
                  iou_types: Sequence[str] = IOU_TYPES, image_ids: Sequence[int] | None = None,
                  verbose: bool = True) -> dict[str, dict[str, float]]:
    """Run ``COCOeval`` for each IoU type; returns ``{iou_type: {"AP": .., ..., "APL": ..}}``.

    Figures are fractions in ``[0, 1]`` (``-1`` where COCO finds no ground truth of that
    size). With no detections at all the APs are 0. ``verbose`` prints COCO's summary.
    """
    from .._optional import require

    COCOeval = require("pycocotools.cocoeval", "COCO evaluation").COCOeval

    stats: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
        dets = list(results.get(iou_type, []))
        if not dets:
            stats[iou_type] = dict.fromkeys(STAT_NAMES, 0.0)
            if verbose:
                print(f"{iou_type}: no detections, all APs are 0")
            continue
        sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
        with sink:
            # loadRes adds fields to the results, so give it copies
            coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            if image_ids is not None:
                evaluator.params.imgIds = sorted(set(int(i) for i in image_ids))
            if verbose:
                print(f"IoU metric: {iou_type}")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats[iou_type] = {n: float(v) for n, v in zip(STAT_NAMES, evaluator.stats[:6],
                                                        strict=True)}
    return stats


def format_stats(stats: Mapping[str, Mapping[str, float]]) -> str:
    """One line per IoU type with the six APs in percent, Table 7's columns."""
    header = f"{'':5s}" + "".join(f"{n:>7s}" for n in STAT_NAMES)
    lines = [header]
    for iou_type, values in stats.items():
        lines.append(f"{iou_type:5s}" + "".join(
            f"{100 * values[n]:7.1f}" if values[n] >= 0 else f"{'n/a':>7s}" for n in STAT_NAMES))
    return "\n".join(lines)
