"""Training and evaluation of Mask R-CNN: the 1x schedule, DDP, checkpoints, COCO eval.

Library functions (:func:`train_one_epoch`, :func:`evaluate`, :func:`run_train`,
:func:`run_eval`); the CLI (``a2d2c detect``) only parses arguments and calls them.
Multi-GPU runs are launched with torchrun, e.g.
``torchrun --nproc_per_node 8 -m a2d2c detect train --config detection/x``;
a single process never touches ``torch.distributed``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Subset

from ..engine.checkpoint import FORMAT, load_checkpoint, save_checkpoint, unwrap_model
from ..engine.distributed import (
    DistContext,
    barrier,
    cleanup_distributed,
    init_distributed,
    is_distributed,
)
from ..engine.schedule import build_lr_scheduler
from ..temperature import TemperatureScheduler, get_temperature, set_temperature
from .coco_eval import IOU_TYPES, coco_evaluate, format_stats, to_coco_results
from .config import DetectionConfig, load_config, save_config
from .data import CocoInstances, GroupedBatchSampler, collate
from .model import create_maskrcnn

__all__ = [
    "build_detection_schedule",
    "build_detector",
    "evaluate",
    "load_detector_checkpoint",
    "run_eval",
    "run_train",
    "train_one_epoch",
]

Log = Callable[[str], None]


def _rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def _world() -> int:
    return dist.get_world_size() if is_distributed() else 1


def _all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj`` in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * _world()
    dist.all_gather_object(out, obj)
    return out


def _log(msg: str) -> None:
    if _rank() == 0:  # the "a2d2c" logger: quiet in a library, stdout under the CLI
        logging.getLogger("a2d2c").info(msg)


def build_detection_schedule(optimizer: torch.optim.Optimizer, train: Any,
                             steps_per_epoch: int) -> LRScheduler:
    """mmdetection's 1x schedule with torch's schedulers, stepped per iteration.

    ``lr = base · w(it) · gamma^#{s ∈ lr_steps : epoch ≥ s}``, ``w`` rising linearly from
    ``warmup_factor`` to 1 over ``warmup_iters`` iterations (500 from 0.001 in the 1x
    schedule; ``lr_steps`` [8, 11] count finished epochs: epochs 9–11 at 0.1×, 12 at 0.01×).
    """
    total = train.epochs * steps_per_epoch
    return build_lr_scheduler(
        optimizer, "step", total_steps=total, warmup_steps=min(train.warmup_iters, total),
        warmup_factor=train.warmup_factor, gamma=train.lr_gamma,
        milestones=[s * steps_per_epoch for s in train.lr_steps])


def build_detector(config: DetectionConfig, *, num_classes: int,
                   load_pretrained: bool = True) -> nn.Module:
    """The Mask R-CNN a config describes (``num_classes`` from the dataset)."""
    m = config.model
    return create_maskrcnn(
        m.backbone, num_classes=num_classes,
        pretrained=m.pretrained if load_pretrained else None, placement=m.placement,
        num_kernels=m.num_kernels, conv_kwargs=m.conv_kwargs, width_mult=m.width_mult,
        variant=m.variant, frozen_bn=m.norm == "frozen", trainable_layers=m.trainable_layers,
        fpn_channels=m.fpn_channels, min_size=m.min_size, max_size=m.max_size,
        anchor_sizes=tuple(m.anchor_sizes) if m.anchor_sizes else None,
        box_head_dim=m.box_head_dim, mask_head_dim=m.mask_head_dim,
        detector_kwargs=m.detector_kwargs,
    )


def build_temperature(model: nn.Module, config: DetectionConfig,
                      steps_per_epoch: int) -> TemperatureScheduler | None:
    """Apply the temperature policy of ``config.temperature`` (see TemperatureConfig)."""
    t = config.temperature
    mode = t.mode
    if mode == "auto":
        mode = "constant" if config.model.pretrained else "anneal"
    if mode == "constant":
        set_temperature(model, t.end)
        return None
    return TemperatureScheduler(model, steps_per_epoch, start=t.start, end=t.end,
                                anneal_epochs=t.anneal_epochs)


def _autocast(device: torch.device, amp: bool):
    enabled = amp and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train_one_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, loader: Iterable, *,
    device: torch.device, epoch: int, lr_scheduler: LRScheduler,
    temperature: TemperatureScheduler | None = None, amp: bool = False,
    max_iters: int | None = None, clip_grad_norm: float | None = None,
    print_freq: int = 20, log: Log = _log,
) -> dict[str, float]:
    """One epoch of Mask R-CNN training; returns the mean of each loss term."""
    model.train()
    sums: dict[str, float] = defaultdict(float)
    count = 0
    start = time.perf_counter()
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    if max_iters is not None and total is not None:
        total = min(total, max_iters)
    for i, (images, targets) in enumerate(loader):
        if max_iters is not None and i >= max_iters:
            break
        images = [img.to(device, non_blocking=True) for img in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        with _autocast(device, amp):
            losses = model(images, targets)
        loss = sum(losses.values())
        if not math.isfinite(loss.item()):
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {epoch + 1} iteration {i}: "
                f"{ {k: float(v.detach()) for k, v in losses.items()} }")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm:
            nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], clip_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        if temperature is not None:
            temperature.step()
        count += 1
        for k, v in losses.items():
            sums[k] += float(v.detach())
        sums["loss"] += float(loss.detach())
        if print_freq and (i % print_freq == 0 or (total is not None and i + 1 == total)):
            tau = get_temperature(model)
            tau_s = f" tau {tau:.2f}" if tau is not None else ""
            parts = " ".join(f"{k} {v:.3f}" for k, v in losses.items())
            log(f"epoch {epoch + 1} [{i + 1}/{total}] loss {float(loss.detach()):.3f} ({parts}) "
                f"lr {optimizer.param_groups[0]['lr']:.5f}{tau_s} "
                f"{(time.perf_counter() - start) / (i + 1):.3f}s/it")
    return {k: v / max(count, 1) for k, v in sums.items()}


@torch.no_grad()
def evaluate(model: nn.Module, dataset: CocoInstances, *, device: torch.device,
             batch_size: int = 1, workers: int = 0, amp: bool = False,
             iou_types: tuple[str, ...] = IOU_TYPES, verbose: bool = True,
             log: Log = _log) -> dict[str, dict[str, float]]:
    """COCO AP of ``model`` on ``dataset`` (bbox and segm), the six figures per type.

    Under DDP each process runs every ``world_size``-th image and rank 0 evaluates the
    gathered results; every process returns the same figures.
    """
    model.eval()
    rank, world = _rank(), _world()
    shard = Subset(dataset, list(range(rank, len(dataset), world)))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate)
    results: dict[str, list] = {"bbox": [], "segm": []}
    image_ids: list[int] = []
    start = time.perf_counter()
    for images, targets in loader:
        images = [img.to(device, non_blocking=True) for img in images]
        with _autocast(device, amp):
            outputs = model(images)
        ids = [int(t["image_id"]) for t in targets]
        image_ids += ids
        part = to_coco_results(outputs, ids, dataset.label_to_cat)
        for k in results:
            results[k] += part[k]
    gathered = _all_gather_object((results, image_ids))
    stats: dict[str, dict[str, float]] = {}
    if rank == 0:
        merged: dict[str, list] = {"bbox": [], "segm": []}
        all_ids: list[int] = []
        for res, ids in gathered:
            all_ids += ids
            for k in merged:
                merged[k] += res[k]
        log(f"evaluated {len(all_ids)} images in {time.perf_counter() - start:.1f}s")
        stats = coco_evaluate(dataset.coco, merged, iou_types=iou_types, image_ids=all_ids,
                              verbose=verbose)
        log(format_stats(stats))
    stats = _all_gather_object(stats)[0]
    return stats


# ------------------------------------------------------------------------- checkpoints

def _checkpoint_state(*, model: nn.Module, optimizer: torch.optim.Optimizer,
                      lr_scheduler: LRScheduler, temperature: TemperatureScheduler | None,
                      epoch: int, config: DetectionConfig,
                      dataset: CocoInstances) -> dict[str, Any]:
    """The engine's checkpoint format (``a2d2c.engine.checkpoint``) plus detection fields."""
    return {
        "format": FORMAT, "version": 1, "task": "detection",
        "model_name": f"maskrcnn_fpn:{config.model.backbone}",
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "temperature": temperature.state_dict() if temperature is not None else None,
        "epoch": epoch, "step_in_epoch": 0,
        "config": config.to_dict(),
        "class_names": list(dataset.class_names),
        "label_to_cat": dict(dataset.label_to_cat),
    }


def load_detector_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu",
                             config: DetectionConfig | None = None
                             ) -> tuple[nn.Module, DetectionConfig]:
    """Rebuild a trained detector from a checkpoint of :func:`run_train`.

    The architecture comes from the config saved in the checkpoint, or from ``config``
    for a plain state_dict / ``.safetensors`` file; the weights must match it exactly.
    """
    from ..engine.checkpoint import CheckpointError, compare_state, read_weights

    path = Path(path)
    try:
        state, meta = read_weights(path)  # the one checkpoint reader (prefixes cleaned)
    except CheckpointError as e:
        raise ValueError(str(e)) from None
    if config is None:
        if not isinstance(meta.get("config"), dict) or path.suffix == ".safetensors":
            raise ValueError(f"checkpoint {str(path)!r} carries no config; pass the detection "
                             "config it was trained with")
        if meta.get("task", "detection") != "detection":
            raise ValueError(f"{str(path)!r} is a {meta['task']} checkpoint, not a detector")
        config = load_config(base=meta["config"])
    num_classes = config.model.num_classes
    if num_classes is None:
        key = "roi_heads.box_predictor.cls_score.weight"
        if key not in state:
            raise ValueError(f"{str(path)!r} holds no Mask R-CNN weights (no {key})")
        num_classes = state[key].shape[0]
    model = build_detector(config, num_classes=num_classes, load_pretrained=False)
    diff = compare_state(model, state)
    if not diff.ok:
        raise ValueError(
            f"checkpoint {str(path)!r} does not match the detector of its config (backbone "
            f"{config.model.backbone!r}): {diff.describe(3)}")
    model.load_state_dict(state)
    return model, config


# ------------------------------------------------------------------------------- runs

def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_train(config: DetectionConfig, *, resume: str | None = None,
              log: Log = _log) -> dict[str, dict[str, float]]:
    """Train (and evaluate) the detector of ``config``; returns the last evaluation.

    Under torchrun every process calls this; the process group is started here (and
    ended again if this call started it).
    """
    ctx = init_distributed(config.device)
    try:
        return _train(config, ctx, resume=resume, log=log)
    finally:
        cleanup_distributed(ctx)


def _train(config: DetectionConfig, ctx: DistContext, *, resume: str | None,
           log: Log) -> dict[str, dict[str, float]]:
    device, distributed, rank, world = ctx.device, ctx.distributed, ctx.rank, ctx.world_size
    _seed(config.train.seed + rank)
    d, t = config.data, config.train
    train_set = CocoInstances(d.root, d.train_split, train=True, hflip_prob=d.hflip_prob)
    val_set = CocoInstances(d.root, d.val_split, train=False)
    if config.model.num_classes not in (None, train_set.num_classes):
        raise ValueError(f"model.num_classes={config.model.num_classes} disagrees with the "
                         f"dataset's {train_set.num_classes} (classes + background)")
    config.model.num_classes = train_set.num_classes
    model = build_detector(config, num_classes=train_set.num_classes).to(device)
    out = Path(config.output_dir)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")

    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                 seed=t.seed)
    if d.aspect_ratio_grouping:
        batches = GroupedBatchSampler(sampler, train_set.aspect_ratios(), t.batch_size)
    else:
        batches = BatchSampler(sampler, t.batch_size, drop_last=False)
    loader = DataLoader(train_set, batch_sampler=batches, num_workers=d.workers,
                        collate_fn=collate, pin_memory=device.type == "cuda",
                        persistent_workers=d.workers > 0)
    steps_per_epoch = len(batches)
    if t.max_iters_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, t.max_iters_per_epoch)

    params = [p for p in model.parameters() if p.requires_grad]
    lr = t.lr * t.batch_size * world / t.lr_batch_size
    optimizer = torch.optim.SGD(params, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay)
    lr_scheduler = build_detection_schedule(optimizer, t, steps_per_epoch)
    temperature = build_temperature(model, config, steps_per_epoch)
    start_epoch = 0
    if resume:
        state = load_checkpoint(resume, require=("model", "optimizer", "lr_scheduler", "epoch"))
        if state.get("model_name") != f"maskrcnn_fpn:{config.model.backbone}":
            raise ValueError(f"cannot resume from {resume}: it holds {state.get('model_name')!r}, "
                             f"the config builds maskrcnn_fpn:{config.model.backbone}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        if temperature is not None and state.get("temperature"):
            temperature.load_state_dict(state["temperature"])
        start_epoch = int(state["epoch"])
        log(f"resumed from {resume} after epoch {start_epoch}")
    train_model: nn.Module = model
    if distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in params)
    log(f"{config.model.backbone}: {n_params / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M "
        f"trained), {train_set.num_classes - 1} classes, {len(train_set)} training images, "
        f"{world} process(es) × {t.batch_size} images, lr {lr:g}, "
        f"temperature {'constant' if temperature is None else 'annealed'} "
        f"(tau {get_temperature(model)})")

    stats: dict[str, dict[str, float]] = {}
    for epoch in range(start_epoch, t.epochs):
        sampler.set_epoch(epoch)
        train_one_epoch(train_model, optimizer, loader, device=device, epoch=epoch,
                        lr_scheduler=lr_scheduler, temperature=temperature, amp=t.amp,
                        max_iters=t.max_iters_per_epoch, clip_grad_norm=t.clip_grad_norm,
                        print_freq=t.print_freq, log=log)
        if ctx.is_main:
            save_checkpoint(_checkpoint_state(
                model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
                temperature=temperature, epoch=epoch + 1, config=config, dataset=train_set),
                out / "checkpoint.pth")
        last = epoch + 1 == t.epochs
        if last or (t.eval_every and (epoch + 1) % t.eval_every == 0):
            stats = evaluate(model, val_set, device=device, batch_size=t.batch_size,
                             workers=d.workers, amp=t.amp, log=log)
            if ctx.is_main:
                with open(out / "eval.jsonl", "a") as f:
                    f.write(json.dumps({"epoch": epoch + 1, **stats}) + "\n")
        barrier()
    return stats


def run_eval(checkpoint: str | Path, *, config: DetectionConfig | None = None,
             data_root: str | None = None, split: str | None = None, device: str = "auto",
             batch_size: int = 1, workers: int = 2, amp: bool = False,
             log: Log = _log) -> dict[str, dict[str, float]]:
    """Evaluate a trained detector checkpoint on a COCO split (default: the config's val)."""
    dev = init_distributed(device).device
    model, cfg = load_detector_checkpoint(checkpoint, config=config)
    dataset = CocoInstances(data_root or cfg.data.root, split or cfg.data.val_split,
                            train=False)
    if dataset.num_classes != model.roi_heads.box_predictor.cls_score.out_features:
        raise ValueError(
            f"the dataset has {dataset.num_classes - 1} classes but the detector was trained "
            f"for {model.roi_heads.box_predictor.cls_score.out_features - 1}")
    model.to(dev)
    log(f"evaluating {checkpoint} ({cfg.model.backbone}) on {dataset.image_dir} "
        f"({len(dataset)} images)")
    return evaluate(model, dataset, device=dev, batch_size=batch_size, workers=workers,
                    amp=amp, log=log)
