"""Learning-rate schedules for classification and detection: torch's schedulers, stepped
once per iteration.

    sched = build_lr_scheduler(optimizer, "cosine", total_steps=epochs * steps_per_epoch,
                               warmup_steps=steps_per_epoch, warmup_factor=0.01)
    for batch in loader: ...; optimizer.step(); sched.step()

* ``step``: ``MultiStepLR`` — the LR is multiplied by ``gamma`` at each milestone
  (iterations; epoch milestones × steps per epoch). A warm-up multiplies it
  (``ChainedScheduler``): ``lr = base · w(it) · gamma^#{m <= it}``, mmdetection's form.
* ``cosine``: ``CosineAnnealingLR`` from the base LR to ``min_lr`` over the iterations
  after the warm-up (``SequentialLR``: warm-up first, then the cosine).
* ``constant``: ``ConstantLR`` with factor 1 (after the warm-up, if any).
* warm-up: ``LinearLR`` from ``warmup_factor`` to 1 over ``warmup_steps`` iterations.

Every scheduler's ``state_dict`` round-trips exactly, so a resumed run continues with
the same learning rates as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.optim import lr_scheduler as sch

__all__ = ["SCHEDULES", "build_lr_scheduler", "epoch_schedule"]

SCHEDULES = ("step", "cosine", "constant")


def build_lr_scheduler(optimizer: torch.optim.Optimizer, name: str, *, total_steps: int,
                       warmup_steps: int = 0, warmup_factor: float = 0.01,
                       milestones: Sequence[int] = (), gamma: float = 0.1,
                       min_lr: float = 0.0) -> sch.LRScheduler:
    """A per-iteration torch scheduler (see the module's description of each ``name``)."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule {name!r}: choose from {', '.join(SCHEDULES)}")
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps, got "
                         f"{total_steps}, {warmup_steps}")
    warm = (sch.LinearLR(optimizer, start_factor=warmup_factor, end_factor=1.0,
                         total_iters=warmup_steps) if warmup_steps else None)
    if name == "step":
        main: sch.LRScheduler = sch.MultiStepLR(optimizer, milestones=sorted(milestones),
                                                gamma=gamma)
        return sch.ChainedScheduler([warm, main], optimizer) if warm is not None else main
    if name == "cosine":
        main = sch.CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup_steps, 1),
                                     eta_min=min_lr)
    else:
        main = sch.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warm is None:
        return main
    return sch.SequentialLR(optimizer, [warm, main], milestones=[warmup_steps])


def epoch_schedule(optimizer: torch.optim.Optimizer, cfg: object, epochs: int,
                   steps_per_epoch: int) -> sch.LRScheduler:
    """:func:`build_lr_scheduler` from a ``ScheduleConfig`` (epochs → iterations).

    A fractional ``warmup_epochs`` is rounded to whole iterations (at least one when > 0).
    """
    warm_epochs = float(getattr(cfg, "warmup_epochs", 0.0))
    warm = max(1, round(warm_epochs * steps_per_epoch)) if warm_epochs > 0 else 0
    return build_lr_scheduler(
        optimizer, cfg.name, total_steps=epochs * steps_per_epoch,  # type: ignore[attr-defined]
        warmup_steps=warm, warmup_factor=cfg.warmup_factor,  # type: ignore[attr-defined]
        milestones=[m * steps_per_epoch for m in cfg.milestones],  # type: ignore[attr-defined]
        gamma=cfg.gamma, min_lr=cfg.min_lr)  # type: ignore[attr-defined]
