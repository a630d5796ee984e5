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
import copy
import logging
import math
import os
import random
import signal
import sys
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

from ..ops import tuning
from ..temperature import TemperatureScheduler, get_temperature
from .checkpoint import (
    FORMAT,
    RESUME_KEYS,
    WEIGHTS_KEYS,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_model_state,
    read_weights,
    restore_rng_state,
    save_checkpoint,
    save_safetensors,
    unwrap_model,
)
from .config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    save_config,
    validate_config,
)
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
    "load_model",
    "load_weights",
    "train_one_epoch",
]

log = logging.getLogger("a2d2c")

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
    accum_steps: int = 1,
    batch_transform: Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor,
                                                                      torch.Tensor]]
    | None = None,
    ema: Any | None = None,
) -> EpochResult:
    """One pass over ``loader`` (from ``start_step`` when resuming mid-epoch).

    After every step the LR and temperature schedulers step (per iteration), the loss
    is checked (:class:`NonFiniteLossError`) and ``stop`` is consulted — agreed across
    ranks, so all processes stop after the same step. ``stats`` (``[loss_sum,
    correct, samples]`` of this epoch so far, this rank) carries the epoch's running
    totals across an interruption. Returned loss/top-1 are reduced across ranks.

    ``accum_steps``: a step is an optimizer step over that many consecutive batches
    (the loss of each scaled by ``1/accum_steps``; DDP synchronises only on the last);
    a last incomplete group of an epoch is skipped. ``batch_transform(x, y, i)`` changes
    batch ``i`` of the epoch before it reaches the device (MixUp/CutMix; soft targets
    count the most probable class for top-1). ``ema.step(model)`` follows every
    optimizer step.
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
        bar = tqdm(total=start_step + len(loader) // accum_steps, initial=start_step, leave=False,
                   desc=f"epoch {epoch + 1}", dynamic_ncols=True, disable=None)
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                              enabled=amp_dtype is not None)
    limit = len(loader) // accum_steps * accum_steps  # batches of complete steps
    micro = 0
    for i, (x, y) in enumerate(loader):
        if i >= limit:
            break
        if batch_transform is not None:
            x, y = batch_transform(x, y, start_step * accum_steps + i)
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
        n = y.shape[0]
        stats[0] += loss_value * n
        hard = y.argmax(1) if y.dim() == 2 else y
        stats[1] += float((logits.detach().argmax(1) == hard).sum())
        stats[2] += n
        if micro == 0:
            optimizer.zero_grad(set_to_none=True)
        micro += 1
        if micro < accum_steps:  # accumulate; DDP all-reduces on the group's last batch
            with model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext():
                loss = loss / accum_steps
                (scaler.scale(loss) if scaler is not None else loss).backward()
            continue
        micro = 0
        if accum_steps > 1:
            loss = loss / accum_steps
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
        if ema is not None:
            ema.step(unwrap_model(model))
        if lr_scheduler is not None:
            lr_scheduler.step()
        if temperature is not None:
            temperature.step()
        step += 1
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


def _isatty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def _progress_line(ctx: DistContext, epoch: int, epochs: int, step: int, steps: int,
                   stats: list[float], optimizer: torch.optim.Optimizer, t0: float) -> None:
    """``epoch 2/10 step 150/391: loss 1.234 top-1 55.1% lr 0.0625 (210 img/s)`` (rank 0's
    running figures for this epoch)."""
    n = max(stats[2], 1.0)
    rate = stats[2] / max(time.perf_counter() - t0, 1e-9)
    _log(ctx, f"epoch {epoch + 1}/{epochs} step {step}/{steps}: loss {stats[0] / n:.4f} "
         f"top-1 {100 * stats[1] / n:.2f}% lr {optimizer.param_groups[0]['lr']:.4g} "
         f"({rate:.0f} img/s)")


def _log(ctx: DistContext, *msg: Any, level: int = logging.INFO) -> None:
    if ctx.is_main:  # the "a2d2c" logger: quiet in a library, stdout under the CLI
        log.log(level, " ".join(str(m) for m in msg))


def fit(cfg: Config, *, resume: str | os.PathLike | None = None,
        stop: StopRequest | None = None,
        on_step: Callable[[int], None] | None = None,
        allow_changed_model: bool = False) -> FitResult:
    """Train ``cfg`` to the end (or until stopped), evaluating and checkpointing.

    ``resume`` continues from a checkpoint (its model must match ``cfg.model``: name
    and every option in ``model.kwargs``; ``allow_changed_model=True`` accepts other
    options when the weights still fit, e.g. a deliberate change of ``num_points``);
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
        auto = cfg.train.output_dir is None
        if auto:  # a new folder of its own (engine/rundir.py)
            cfg = copy.deepcopy(cfg)
            cfg.train.output_dir = _new_run_dir(cfg, ctx)
        try:
            with contextlib.ExitStack() as held:  # the run folder's lock, until the end
                held.enter_context(tuning.benchmark(cfg.train.impl_benchmark))
                return _fit(cfg, ctx, resume, stop, on_step, held, allow_changed_model)
        except BaseException:
            if auto and ctx.is_main:  # failed before writing anything: leave no empty folder
                with contextlib.suppress(OSError):
                    (Path(cfg.train.output_dir) / ".lock").unlink(missing_ok=True)
                    Path(cfg.train.output_dir).rmdir()
            raise
    finally:
        torch.set_num_threads(threads)
        cleanup_distributed(ctx)


def _check_model_arguments(cfg: Config) -> None:
    """Build the model on the ``meta`` device (no memory, no data): invalid model
    arguments (``num_kernels=0``, a misspelt conv option) raise :class:`ConfigError` here."""
    from .build import build_model
    from .config import ConfigError

    num_classes, in_chans = cfg.data.num_classes or 10, cfg.data.in_chans or 3
    try:
        with torch.device("meta"):
            build_model(cfg, num_classes, in_chans, pretrained=False)  # no weights read
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model {cfg.model.name!r} with model.kwargs={cfg.model.kwargs}: "
                          f"{e}") from None
    except Exception:  # a model that cannot be built on meta is built (and checked) later
        pass


def _changed_options(old: Any, new: Any, prefix: str) -> list[str]:
    """``"key: old -> new"`` for every leaf where two nested option dicts differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in sorted(set(old) | set(new), key=str)
                for c in _changed_options(old.get(k, "<unset>"), new.get(k, "<unset>"),
                                          f"{prefix}.{k}")]
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def _check_resume_options(resume: str | os.PathLike, ckpt: dict[str, Any], cfg: Config,
                          allow_changed: bool) -> None:
    """A resumed run must train the model the checkpoint trained, also where the weights
    would fit (a changed ``--model.kwargs.conv_kwargs.num_points`` was accepted silently)."""
    old = (ckpt["config"].get("model") or {}).get("kwargs") or {}
    changed = _changed_options(old, config_to_dict(cfg)["model"]["kwargs"], "model.kwargs")
    if changed and not allow_changed:
        shown = "; ".join(changed[:3]) + (f" (+{len(changed) - 3} more)" if len(changed) > 3
                                          else "")
        raise CheckpointError(
            f"--resume {resume}: the model options differ from the checkpoint's ({shown}); "
            "drop those overrides to continue the same run, or pass --resume-allow-changed "
            "to continue with the changed model")


def _new_run_dir(cfg: Config, ctx: DistContext) -> str:
    """``runs/<data>-<model>-<time>``, chosen by rank 0 and shared with the other ranks."""
    from .rundir import default_output_dir

    name = [str(default_output_dir(cfg.data.name, cfg.model.name))] if ctx.is_main else [None]
    if ctx.distributed:
        torch.distributed.broadcast_object_list(name, src=0)
    return str(name[0])


def _fit(cfg: Config, ctx: DistContext, resume: str | os.PathLike | None, stop: StopRequest,
         on_step: Callable[[int], None] | None,
         held: contextlib.ExitStack | None = None,
         allow_changed_model: bool = False) -> FitResult:
    from ..data import build_dataset, build_loader, dataset_info
    from .build import build_model, build_optimizer
    from .schedule import epoch_schedule

    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = ctx.device
    _check_model_arguments(cfg)  # bad model options fail before any data is looked at
    info = dataset_info(cfg.data)  # fails on missing data before anything is built
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume, map_location="cpu", require=RESUME_KEYS)
        if ckpt.get("model_name") != cfg.model.name:
            raise CheckpointError(f"--resume {resume}: the checkpoint is for model "
                                  f"{ckpt.get('model_name')!r}, the config builds "
                                  f"{cfg.model.name!r}")

    _seed_everything(t.seed)  # the model's initial weights: the same on every rank
    model = build_model(cfg, info.num_classes, info.in_chans, pretrained=ckpt is None)
    if ckpt is not None:
        load_model_state(model, ckpt, source=f"checkpoint {resume}")
        _check_resume_options(resume, ckpt, cfg, allow_changed_model)  # weights fit: options?
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
    accum = cfg.optim.accum_steps
    steps_per_epoch = len(train_loader) // accum  # optimizer steps
    if steps_per_epoch < 1:
        raise ConfigError(f"optim.accum_steps={accum} exceeds the {len(train_loader)} batches "
                          "of an epoch; lower it or data.batch_size")
    per_rank_bs = train_loader.batch_size * accum  # samples per rank and optimizer step
    from ..data.augment import build_batch_mix
    from .ema import ModelEma

    batch_mix = build_batch_mix(cfg.data, info.num_classes, seed=t.seed, rank=ctx.rank)
    ema = (ModelEma(model, cfg.ema.decay, warmup=cfg.ema.warmup, every=cfg.ema.every)
           if cfg.ema.decay is not None else None)

    optimizer = build_optimizer(model, cfg.optim)
    lr_scheduler = epoch_schedule(optimizer, cfg.schedule, t.epochs, steps_per_epoch)
    temp = TemperatureScheduler(model, steps_per_epoch, start=cfg.temperature.start,
                                end=cfg.temperature.end,
                                anneal_epochs=cfg.temperature.anneal_epochs)
    amp_dtype = AMP_DTYPES[t.amp]
    scaler = torch.amp.GradScaler(device.type) if t.amp == "fp16" else None

    start_epoch, start_step, global_step, best_top1 = 0, 0, 0, None
    epoch_stats: list[float] | None = None
    if ckpt is not None:
        if (ckpt["config"].get("data") or {}).get("batch_size") != cfg.data.batch_size or (
                ckpt.get("world_size", 1) != ctx.world_size and ckpt["step_in_epoch"]):
            _log(ctx, "warning: batch size or world size changed since the checkpoint; "
                 "the continuation is not exact", level=logging.WARNING)
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
            lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
            temp.load_state_dict(ckpt["temperature"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            if ema is not None and ckpt.get("ema"):
                ema.load_state_dict(ckpt["ema"])
            elif ema is not None:
                _log(ctx, "note: the checkpoint has no EMA; the average starts now")
            rng = ckpt["rng"]
            restore_rng_state(rng[ctx.rank] if isinstance(rng, list) else rng)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"--resume {resume}: its optimizer / schedule / RNG state does not fit this "
                f"run ({type(e).__name__}: {str(e).strip()[:200] or 'malformed entry'}); the "
                "checkpoint is corrupt or from another model or optimizer") from None
        start_epoch, start_step = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
        global_step = int(ckpt["global_step"])
        best_top1 = ckpt.get("best_top1")
        epoch_stats = ckpt.get("epoch_stats") if start_step else None
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
        from .rundir import RunLock, check_fresh_run_dir

        out.mkdir(parents=True, exist_ok=True)
        lock = RunLock(out)
        if held is not None:
            held.enter_context(lock)  # a second run into this folder stops here
        if ckpt is None:
            check_fresh_run_dir(out, t.overwrite)
        save_config(cfg, out / "config.yaml")
        from .metrics import MetricsWriter

        writer = MetricsWriter(out, tensorboard=t.tensorboard)
        if ckpt is None and (out / "last.pt").exists():
            _log(ctx, f"note: replacing the earlier run in {out} (train.overwrite)")
        writer.truncate_after(start_epoch)  # rows beyond the starting point are redone
    _log(ctx, f"model {cfg.model.name}: {n_params / 1e6:.3f}M params | data {cfg.data.name}: "
         f"{len(train_set)} train / {len(val_set)} val images, {info.num_classes} classes | "
         f"{ctx.world_size} process(es) on {device.type}, batch {cfg.data.batch_size} "
         f"({train_loader.batch_size}/process{f' x {accum} accumulated' if accum > 1 else ''})"
         f", {steps_per_epoch} steps/epoch, {t.epochs} epochs"
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
            "ema": ema.state_dict() if ema is not None else None,
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
    # progress lines where a bar cannot draw (stdout redirected: SLURM, nohup, CI)
    lines_every = t.log_every if (t.progress and ctx.is_main and not _isatty()) else 0
    for epoch in range(start_epoch, t.epochs):
        sampler.set_epoch(epoch)
        t0_epoch = time.perf_counter()
        first = start_step if epoch == start_epoch else 0
        if first:
            sampler.skip(first * per_rank_bs)

        def step_hook(step: int, stats: list[float], _epoch: int = epoch,
                      _t0: float = t0_epoch) -> None:
            nonlocal global_step
            global_step += 1
            if lines_every and step % lines_every == 0:
                _progress_line(ctx, _epoch, t.epochs, step, steps_per_epoch, stats,
                               optimizer, _t0)
            if t.checkpoint_every and global_step % t.checkpoint_every == 0 and (
                    step < steps_per_epoch):
                totals = reduced(stats)
                checkpoint("last.pt", make_state(_epoch, step, {}, totals))
            if on_step is not None:
                on_step(global_step)

        # the running totals of an interrupted epoch were stored reduced over ranks:
        # rank 0 carries them on, the others start from zero
        carried = epoch_stats if (epoch == start_epoch and epoch_stats and ctx.is_main) else None
        mix = None if batch_mix is None else (
            lambda x, y, i, _epoch=epoch: batch_mix(x, y, epoch=_epoch, step=i))
        res = train_one_epoch(
            train_model, train_loader, optimizer, device=device, epoch=epoch,
            criterion=nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing),
            lr_scheduler=lr_scheduler, temperature=temp, scaler=scaler, amp_dtype=amp_dtype,
            clip_grad_norm=cfg.optim.clip_grad_norm, channels_last=t.channels_last,
            start_step=first, stats=carried, stop=stop, on_step=step_hook,
            progress=t.progress and ctx.is_main, accum_steps=accum, batch_transform=mix,
            ema=ema)
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
            if ema is not None:  # the averaged weights, beside the raw ones
                ev = evaluate(ema.module, val_loader, device=device, amp_dtype=amp_dtype,
                              channels_last=t.channels_last)
                row.update(ema_val_loss=ev["loss"], ema_val_top1=ev["top1"],
                           ema_val_top5=ev["top5"])
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
             + (f"EMA top-1 {row['ema_val_top1']:.2f}% | " if "ema_val_top1" in row else "")
             + f"lr {row['lr']:.4g}"
             + (f" tau {row['temperature']:.3g}" if row["temperature"] is not None else "")
             + f" | {res.time_s:.1f}s" + (f" | attn {attn[1]}" if attn[1] else ""))
        if t.impl_benchmark and epoch == start_epoch:  # what measuring chose, once
            _log(ctx, f"impl benchmark (train.impl_benchmark): {tuning.summary()}")
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
        tensors, meta = read_weights(path)
        if not isinstance(meta.get("config"), dict):
            raise CheckpointError(f"{path} has no a2d2c config metadata")
        state = {"format": FORMAT, "model": tensors, "model_name": meta.get("model_name"),
                 "num_classes": meta.get("num_classes"), "in_chans": meta.get("in_chans"),
                 "metrics": {"val_top1": meta.get("val_top1")}}
        return state, config_from_dict(meta["config"])
    state = load_checkpoint(path, require=WEIGHTS_KEYS)
    return state, config_from_checkpoint(state)


def load_model(checkpoint: str | os.PathLike) -> nn.Module:
    """Rebuild a trained classifier from its checkpoint alone, in eval mode on the CPU.

    ``checkpoint`` is a training checkpoint (``last.pt``/``best.pt``) or the released
    ``model.safetensors``: the registry name, its options, the number of classes and input
    channels are read from it — no recipe, no dataset needed::

        model = a2d2c.load_model("runs/x/best.pt")
        probs = model(images).softmax(-1)
    """
    from .build import build_model

    state, cfg = load_weights(checkpoint)
    num_classes, in_chans = state.get("num_classes"), state.get("in_chans")
    if num_classes is None or in_chans is None:
        raise CheckpointError(f"{checkpoint} does not record num_classes/in_chans; rebuild the "
                              "model with a2d2c.create_model and load_model_state")
    model = build_model(cfg, int(num_classes), int(in_chans), pretrained=False)
    load_model_state(model, state, source=f"checkpoint {checkpoint}",
                     expected_name=cfg.model.name)
    return model.eval()


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
    held = contextlib.ExitStack()
    try:
        held.enter_context(tuning.benchmark(cfg.train.impl_benchmark))
        info = dataset_info(cfg.data)
        model = build_model(cfg, info.num_classes, info.in_chans, pretrained=False)
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
        if state.get("ema"):  # the averaged weights too
            from .ema import ema_weights

            load_model_state(model, {"model": ema_weights(state["ema"])},
                             source=f"checkpoint {path} (EMA)")
            metrics["ema"] = evaluate(model, loader, device=ctx.device,
                                      amp_dtype=AMP_DTYPES[cfg.train.amp],
                                      channels_last=cfg.train.channels_last)
            metrics["recorded_ema_top1"] = (state.get("metrics") or {}).get("ema_val_top1")
    finally:
        held.close()
        torch.set_num_threads(threads)
        cleanup_distributed(ctx)
    metrics["recorded_top1"] = (state.get("metrics") or {}).get("val_top1")
    metrics["model_name"] = cfg.model.name
    metrics["dataset"] = cfg.data.name
    return metrics
