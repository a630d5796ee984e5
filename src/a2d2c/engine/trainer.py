"""Training and evaluation loops, and :func:`fit`, the whole run from a config.

``train_one_epoch`` and ``evaluate`` are usable on their own with any model, loader
and optimizer; :func:`fit` builds everything from a :class:`Config`, handles
distribution, checkpoints, resumption, signals and metrics.

Exactness of resumption: the data order and augmentation are pure functions of
``(seed, epoch)`` (:class:`a2d2c.data.ResumableSampler`); the model's own randomness
(A²D²C point sampling) comes from the global RNGs, seeded with ``seed + rank`` and saved
in every checkpoint together with the optimizer, schedulers and AMP scaler. A run
stopped after any step and resumed yields bitwise the weights of an uninterrupted run
(on CPU; on GPU as far as the kernels are deterministic).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..temperature import TemperatureScheduler, get_temperature
from .checkpoint import (
    FORMAT,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_model_state,
    restore_rng_state,
    save_checkpoint,
    save_safetensors,
    unwrap_model,
)
from .config import Config, config_from_dict, config_to_dict, save_config, validate_config
from .distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    cleanup_distributed,
    init_distributed,
)

__all__ = [
    "EpochResult",
    "FitResult",
    "NonFiniteLossError",
    "StopRequest",
    "config_from_checkpoint",
    "evaluate",
    "evaluate_checkpoint",
    "fit",
    "handle_signals",
    "load_weights",
    "train_one_epoch",
]

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops without saving."""


class StopRequest:
    """A stop flag checked at every step boundary (set by signals or callbacks)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def request(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def handle_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """SIGTERM/SIGINT set ``stop`` (training checkpoints at the next step and exits).

    A second SIGINT raises ``KeyboardInterrupt`` at once. Outside the main thread
    (where Python cannot install handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_signal(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and stop.requested:
            raise KeyboardInterrupt
        stop.request(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _tqdm() -> Any:
    """tqdm if installed (an optional extra), else None: no progress bar."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def _topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]
                  ) -> list[torch.Tensor]:
    """Correct predictions at each k; a sample with a non-finite logit is never correct
    (``topk`` would rank NaN first and could count it as a hit)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = (pred == target[:, None]) & torch.isfinite(logits).all(dim=1, keepdim=True)
    return [hit[:, :min(k, maxk)].any(dim=1).sum() for k in ks]


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


@dataclass
class EpochResult:
    loss: float
    top1: float
    samples: int
    steps: int  # steps of this epoch completed (including any before a resume)
    stopped: bool
    time_s: float


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    epoch: int = 0,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    lr_scheduler: Any | None = None,
    temperature: TemperatureScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    clip_grad_norm: float | None = None,
    channels_last: bool = False,
    start_step: int = 0,
    stats: list[float] | None = None,
    stop: StopRequest | None = None,
    on_step: Callable[[int, list[float]], None] | None = None,
    progress: bool = False,
) -> EpochResult:
    """One pass over ``loader`` (from ``start_step`` when resuming mid-epoch).

    After every step the LR and temperature schedulers step (per iteration), the loss
    is checked (:class:`NonFiniteLossError`) and ``stop`` is consulted — agreed across
    ranks, so all processes stop after the same step. ``stats`` (``[loss_sum,
    correct, samples]`` of this epoch so far, this rank) carries the epoch's running
    totals across an interruption. Returned loss/top-1 are reduced across ranks.
    """
    model.train()
    stats = list(stats) if stats is not None else [0.0, 0.0, 0.0]
    step = start_step
    stopped = False
    t0 = time.perf_counter()
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    bar = None
    tqdm = _tqdm() if progress else None
    if tqdm is not None:
        bar = tqdm(total=start_step + len(loader), initial=start_step, leave=False,
                   desc=f"epoch {epoch + 1}", dynamic_ncols=True, disable=None)
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                              enabled=amp_dtype is not None)
    for x, y in loader:
        x, y = _to_device(x, y, device, channels_last)
        with autocast:
            logits = model(x)
            loss = criterion(logits, y)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss_value}) at epoch {epoch + 1}, step "
                f"{step + 1}: stopping. Lower optim.lr, set optim.clip_grad_norm, or use "
                "train.amp=bf16/none; the last checkpoint is from before this step")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad_norm is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
        if lr_scheduler is not None:
            lr_scheduler.step()
        if temperature is not None:
            temperature.step()
        step += 1
        n = y.shape[0]
        stats[0] += loss_value * n
        stats[1] += float((logits.detach().argmax(1) == y).sum())
        stats[2] += n
        if on_step is not None:
            on_step(step, stats)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}",
                            refresh=False)
        want_stop = stop is not None and stop.requested
        if distributed:  # all ranks must stop after the same step
            flag = torch.tensor([float(want_stop)], device=device)
            want_stop = bool(all_reduce_sum(flag).item() > 0)
        if want_stop:
            stopped = True
            break
    if bar is not None:
        bar.close()
    total = torch.tensor(stats, dtype=torch.float64, device=device)
    all_reduce_sum(total)
    loss_sum, correct, count = total.tolist()
    return EpochResult(loss=loss_sum / max(count, 1), top1=100.0 * correct / max(count, 1),
                       samples=int(count), steps=step, stopped=stopped,
                       time_s=time.perf_counter() - t0)


@torch.no_grad()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, *, device: torch.device,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False,
             progress: bool = False) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (%) over ``loader``, summed over all ranks.

    With a non-padded sharding (``build_loader(..., train=False)``) every image is
    counted exactly once, whatever the number of processes.
    """
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    it = loader
    tqdm = _tqdm() if progress else None
    if tqdm is not None:
        it = tqdm(loader, leave=False, desc="eval", dynamic_ncols=True, disable=None)
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                              enabled=amp_dtype is not None)
    for x, y in it:
        x, y = _to_device(x, y, device, channels_last)
        with autocast:
            logits = model(x)
        logits = logits.float()
        c1, c5 = _topk_correct(logits, y, (1, 5))
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                             c1.double(), c5.double(),
                             torch.tensor(float(y.shape[0]), dtype=torch.float64,
                                          device=device)])
    all_reduce_sum(sums)
    loss, c1, c5, n = sums.tolist()
    n = max(n, 1.0)
    return {"loss": loss / n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n,
            "samples": int(sums[3].item())}


# ------------------------------------------------------------------------------ fit
@dataclass
class FitResult:
    status: str  # "completed" | "interrupted"
    output_dir: Path
    epoch: int  # epochs completed
    global_step: int
    best_top1: float | None
    final_metrics: dict[str, Any]
    model: nn.Module  # the trained model, unwrapped (last state, not best)
    signum: int | None = None


def to_channels_last(model: nn.Module) -> nn.Module:
    """Store the 4-d weights channels-last (``Module.to(memory_format=...)`` would fail on
    the 5-d ``(K, O, C, kh, kw)`` kernel banks of dynamic layers)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
    return model


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _attention_diagnostics(model: nn.Module, val_set: Any, images: int,
                           device: torch.device, is_main: bool) -> tuple[dict[str, Any], str]:
    """Per-epoch attention diagnostics of a dynamic model (``train.attention_stats``).

    :func:`a2d2c.diagnostics.attention_stats` on the first ``images`` validation images
    (the same every epoch; eval mode, no gradients, no RNG drawn), on rank 0 only. Returns
    the metrics-row entries ``attn_<head>_<statistic>`` (means over the layers) and the
    progress-line summary; nothing for a static model or with ``images == 0``.
    """
    from ..diagnostics import attention_stats, dynamic_layers

    if not images or not is_main or not dynamic_layers(model):
        return {}, ""
    n = min(images, len(val_set))
    batch = torch.stack([val_set[(i, 0)][0] for i in range(n)])
    report = attention_stats(model, batch, device=device)
    entries = {f"attn_{head}_{k}": v for head, stats in report.summary().items()
               for k, v in stats.items() if v is not None}
    return entries, report.summary_line()


def _log(ctx: DistContext, *msg: Any) -> None:
    if ctx.is_main:
        print(*msg, flush=True)


def fit(cfg: Config, *, resume: str | os.PathLike | None = None,
        stop: StopRequest | None = None,
        on_step: Callable[[int], None] | None = None) -> FitResult:
    """Train ``cfg`` to the end (or until stopped), evaluating and checkpointing.

    ``resume`` continues from a checkpoint (its model must match ``cfg.model``);
    ``stop`` can be set from outside (signals are wired to it by
    :func:`handle_signals`); ``on_step(global_step)`` runs after every step.
    Only global rank 0 writes: ``config.yaml``, ``last.pt``/``best.pt`` (+ ``.prev``),
    ``metrics.jsonl``/``.csv``, ``model.safetensors`` (best weights).
    """
    validate_config(cfg)
    stop = stop or StopRequest()
    ctx = init_distributed(cfg.train.device)
    threads = torch.get_num_threads()
    try:
        return _fit(cfg, ctx, resume, stop, on_step)
    finally:
        torch.set_num_threads(threads)
        cleanup_distributed(ctx)


def _fit(cfg: Config, ctx: DistContext, resume: str | os.PathLike | None, stop: StopRequest,
         on_step: Callable[[int], None] | None) -> FitResult:
    from ..data import build_dataset, build_loader, dataset_info
    from .build import build_model, build_optimizer, lr_factor_fn

    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = ctx.device
    info = dataset_info(cfg.data)  # fails on missing data before anything is built
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume, map_location="cpu")
        if ckpt.get("model_name") != cfg.model.name:
            raise CheckpointError(f"--resume {resume}: the checkpoint is for model "
                                  f"{ckpt.get('model_name')!r}, the config builds "
                                  f"{cfg.model.name!r}")

    _seed_everything(t.seed)  # the model's initial weights: the same on every rank
    model = build_model(cfg, info.num_classes, info.in_chans)
    if ckpt is not None:
        load_model_state(model, ckpt, source=f"checkpoint {resume}")
    model.to(device)
    if t.channels_last:
        to_channels_last(model)
    if ctx.distributed and cfg.model.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    n_params = sum(p.numel() for p in model.parameters())

    train_set = build_dataset(cfg.data.name, "train", cfg.data)
    val_set = build_dataset(cfg.data.name, "val", cfg.data)
    train_loader = build_loader(train_set, cfg.data, train=True, seed=t.seed, rank=ctx.rank,
                                world_size=ctx.world_size, device=device)
    val_loader = build_loader(val_set, cfg.data, train=False, seed=t.seed, rank=ctx.rank,
                              world_size=ctx.world_size, device=device)
    sampler = train_loader.sampler
    steps_per_epoch = len(train_loader)
    per_rank_bs = train_loader.batch_size

    optimizer = build_optimizer(model, cfg.optim)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor_fn(cfg.schedule, t.epochs, steps_per_epoch, cfg.optim.lr))
    temp = TemperatureScheduler(model, steps_per_epoch, start=cfg.temperature.start,
                                end=cfg.temperature.end,
                                anneal_epochs=cfg.temperature.anneal_epochs)
    amp_dtype = AMP_DTYPES[t.amp]
    scaler = torch.amp.GradScaler(device.type) if t.amp == "fp16" else None

    start_epoch, start_step, global_step, best_top1 = 0, 0, 0, None
    epoch_stats: list[float] | None = None
    if ckpt is not None:
        if ckpt["config"]["data"]["batch_size"] != cfg.data.batch_size or (
                ckpt.get("world_size", 1) != ctx.world_size and ckpt["step_in_epoch"]):
            _log(ctx, "warning: batch size or world size changed since the checkpoint; "
                 "the continuation is not exact")
        optimizer.load_state_dict(ckpt["optimizer"])
        lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        temp.load_state_dict(ckpt["temperature"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_step = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
        global_step = int(ckpt["global_step"])
        best_top1 = ckpt.get("best_top1")
        epoch_stats = ckpt.get("epoch_stats") if start_step else None
        rng = ckpt["rng"]
        restore_rng_state(rng[ctx.rank] if isinstance(rng, list) else rng)
    else:
        _seed_everything(t.seed + ctx.rank)  # point sampling differs between ranks

    train_model: nn.Module = model
    if ctx.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        train_model = torch.compile(train_model)

    out = Path(t.output_dir)
    writer = None
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        from .metrics import MetricsWriter

        writer = MetricsWriter(out, tensorboard=t.tensorboard)
        if ckpt is None and (out / "last.pt").exists():
            _log(ctx, f"note: {out} holds an earlier run; starting afresh over it "
                 "(use --resume to continue it, or another --train.output_dir)")
        writer.truncate_after(start_epoch)  # rows beyond the starting point are redone
    _log(ctx, f"model {cfg.model.name}: {n_params / 1e6:.3f}M params | data {cfg.data.name}: "
         f"{len(train_set)} train / {len(val_set)} val images, {info.num_classes} classes | "
         f"{ctx.world_size} process(es) on {device.type}, batch {cfg.data.batch_size} "
         f"({per_rank_bs}/process), {steps_per_epoch} steps/epoch, {t.epochs} epochs"
         + (f" | resuming at epoch {start_epoch + 1} step {start_step}" if ckpt else ""))

    def make_state(epoch: int, step_in_epoch: int, metrics: dict[str, Any],
                   stats: list[float] | None) -> dict[str, Any]:
        rng = capture_rng_state()
        if ctx.distributed:  # every rank's RNG, so that each continues its own stream
            gathered: list[Any] = [None] * ctx.world_size
            torch.distributed.all_gather_object(gathered, rng)
            rng = gathered
        return {
            "format": FORMAT, "version": 1, "model_name": cfg.model.name,
            "num_classes": info.num_classes, "in_chans": info.in_chans,
            "model": unwrap_model(model).state_dict(),
            "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
            "temperature": temp.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
            "epoch_stats": list(stats) if stats else None, "world_size": ctx.world_size,
            "rng": rng, "config": config_to_dict(cfg), "metrics": metrics,
            "best_top1": best_top1,
        }

    def checkpoint(name: str, state: dict[str, Any]) -> None:
        if ctx.is_main:
            save_checkpoint(state, out / name)

    def reduced(stats: list[float]) -> list[float]:
        return all_reduce_sum(torch.tensor(stats, dtype=torch.float64, device=device)).tolist()

    final: dict[str, Any] = {}
    epochs_done, status = start_epoch, "completed"
    for epoch in range(start_epoch, t.epochs):
        sampler.set_epoch(epoch)
        first = start_step if epoch == start_epoch else 0
        if first:
            sampler.skip(first * per_rank_bs)

        def step_hook(step: int, stats: list[float], _epoch: int = epoch) -> None:
            nonlocal global_step
            global_step += 1
            if t.checkpoint_every and global_step % t.checkpoint_every == 0 and (
                    step < steps_per_epoch):
                totals = reduced(stats)
                checkpoint("last.pt", make_state(_epoch, step, {}, totals))
            if on_step is not None:
                on_step(global_step)

        # the running totals of an interrupted epoch were stored reduced over ranks:
        # rank 0 carries them on, the others start from zero
        carried = epoch_stats if (epoch == start_epoch and epoch_stats and ctx.is_main) else None
        res = train_one_epoch(
            train_model, train_loader, optimizer, device=device, epoch=epoch,
            criterion=nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing),
            lr_scheduler=lr_scheduler, temperature=temp, scaler=scaler, amp_dtype=amp_dtype,
            clip_grad_norm=cfg.optim.clip_grad_norm, channels_last=t.channels_last,
            start_step=first, stats=carried, stop=stop, on_step=step_hook,
            progress=t.progress and ctx.is_main)
        broadcast_buffers(model)
        if res.stopped and res.steps < steps_per_epoch:
            totals = [res.loss * res.samples, res.top1 / 100.0 * res.samples,
                      float(res.samples)]
            checkpoint("last.pt", make_state(epoch, res.steps, {}, totals))
            status = "interrupted"
            break
        row: dict[str, Any] = {
            "epoch": epoch + 1, "global_step": global_step,
            "lr": optimizer.param_groups[0]["lr"], "temperature": get_temperature(model),
            "train_loss": res.loss, "train_top1": res.top1, "epoch_time_s": res.time_s,
            "train_samples_per_s": None if first else res.samples / max(res.time_s, 1e-9),
        }
        last_epoch = epoch + 1 == t.epochs
        if (epoch + 1) % t.eval_every == 0 or last_epoch:
            # the plain model: DDP's forward is collective, and the shards of the
            # validation set may hold different numbers of batches
            val = evaluate(model, val_loader, device=device, amp_dtype=amp_dtype,
                           channels_last=t.channels_last, progress=t.progress and ctx.is_main)
            row.update(val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"])
        attn = _attention_diagnostics(model, val_set, t.attention_stats, device, ctx.is_main)
        row.update(attn[0])
        is_best = "val_top1" in row and (best_top1 is None or row["val_top1"] > best_top1)
        if is_best:
            best_top1 = row["val_top1"]
        final = row
        epochs_done = epoch + 1
        _log(ctx, f"epoch {epoch + 1}/{t.epochs}: train loss {res.loss:.4f} top-1 "
             f"{res.top1:.2f}% | " + (f"val loss {row['val_loss']:.4f} top-1 "
                                      f"{row['val_top1']:.2f}% top-5 {row['val_top5']:.2f}% | "
                                      if "val_top1" in row else "")
             + f"lr {row['lr']:.4g}"
             + (f" tau {row['temperature']:.3g}" if row["temperature"] is not None else "")
             + f" | {res.time_s:.1f}s" + (f" | attn {attn[1]}" if attn[1] else ""))
        if writer is not None:
            writer.write(row)
        state = make_state(epoch + 1, 0, row, None)
        checkpoint("last.pt", state)
        if is_best:
            checkpoint("best.pt", state)
        if res.stopped and not last_epoch:
            status = "interrupted"
            break
    if start_epoch >= t.epochs:
        _log(ctx, f"nothing to do: the checkpoint has finished {start_epoch} of "
             f"train.epochs={t.epochs} epochs (raise --train.epochs to train on)")
    if status == "interrupted":
        _log(ctx, f"stopped by signal {stop.signum} after global step {global_step}: "
             f"checkpoint {out / 'last.pt'}; continue with: a2d2c train --resume "
             f"{out / 'last.pt'}")
    elif ctx.is_main and (out / "best.pt").is_file():
        best = load_checkpoint(out / "best.pt")
        save_safetensors(best["model"], out / "model.safetensors", {
            "model_name": cfg.model.name, "num_classes": info.num_classes,
            "in_chans": info.in_chans, "model_kwargs": cfg.model.kwargs,
            "val_top1": best["metrics"].get("val_top1"), "epoch": best["epoch"],
            "config": config_to_dict(cfg)})
    barrier()
    if writer is not None:
        writer.close()
    return FitResult(status=status, output_dir=out, epoch=epochs_done, global_step=global_step,
                     best_top1=best_top1, final_metrics=final, model=model,
                     signum=stop.signum)


def config_from_checkpoint(state: dict[str, Any]) -> Config:
    """The resolved :class:`Config` a checkpoint was written with."""
    return config_from_dict(state["config"])


def load_weights(path: str | os.PathLike) -> tuple[dict[str, Any], Config]:
    """Weights and config of a training checkpoint (``.pt``) or released ``.safetensors``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        import json

        if not path.is_file():
            raise CheckpointError(f"weights file not found: {path}")
        try:
            from safetensors import safe_open
            from safetensors.torch import load_file
        except ImportError as e:
            raise CheckpointError("reading .safetensors needs the safetensors package") from e
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is truncated or corrupt: {e}") from None
        if "config" not in meta:
            raise CheckpointError(f"{path} has no a2d2c config metadata")
        state = {"format": FORMAT, "model": tensors, "model_name": meta.get("model_name"),
                 "metrics": {"val_top1": json.loads(meta.get("val_top1", "null"))}}
        return state, config_from_dict(json.loads(meta["config"]))
    state = load_checkpoint(path)
    return state, config_from_checkpoint(state)


def evaluate_checkpoint(path: str | os.PathLike, overrides: dict[str, Any] | None = None
                        ) -> dict[str, Any]:
    """Rebuild the model a checkpoint was trained as and evaluate it on the val split.

    ``overrides`` (nested dict, e.g. ``{"data": {"root": ...}}``) adjust the stored
    config (data location, batch size, device). Returns the metrics of :func:`evaluate`
    plus ``recorded_top1`` (what the checkpoint says it reached, if anything).
    """
    from ..data import build_dataset, build_loader, dataset_info
    from .build import build_model
    from .config import _merge

    state, cfg = load_weights(path)
    if overrides:
        cfg = config_from_dict(_merge(config_to_dict(cfg), overrides))
    validate_config(cfg)
    ctx = init_distributed(cfg.train.device)
    threads = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    try:
        info = dataset_info(cfg.data)
        model = build_model(cfg, info.num_classes, info.in_chans)
        load_model_state(model, state, source=f"checkpoint {path}", expected_name=cfg.model.name)
        model.to(ctx.device)
        if cfg.train.channels_last:
            to_channels_last(model)
        val_set = build_dataset(cfg.data.name, "val", cfg.data)
        loader = build_loader(val_set, cfg.data, train=False, seed=cfg.train.seed,
                              rank=ctx.rank, world_size=ctx.world_size, device=ctx.device)
        metrics: dict[str, Any] = evaluate(
            model, loader, device=ctx.device, amp_dtype=AMP_DTYPES[cfg.train.amp],
            channels_last=cfg.train.channels_last, progress=cfg.train.progress and ctx.is_main)
    finally:
        torch.set_num_threads(threads)
        cleanup_distributed(ctx)
    metrics["recorded_top1"] = (state.get("metrics") or {}).get("val_top1")
    metrics["model_name"] = cfg.model.name
    metrics["dataset"] = cfg.data.name
    return metrics
