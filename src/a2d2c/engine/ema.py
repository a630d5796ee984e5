"""An exponential moving average of the weights, from ``torch.optim.swa_utils``.

:class:`ModelEma` wraps ``AveragedModel(model, multi_avg_fn=..., use_buffers=True)``
(BatchNorm statistics are averaged too, as in torchvision's reference recipe) with the
update of ``get_ema_multi_avg_fn``. What is added here is the warm-up of the decay
(``min(decay, (1 + n) / (10 + n))`` at the ``n``-th update, timm's and TensorFlow's
rule, so that early averages are not dominated by the random initial weights;
``get_ema_multi_avg_fn`` takes a fixed decay, so the function is rebuilt per update) and
the softmax temperature, which is copied rather than averaged: the averaged network is
evaluated at the current ``τ`` of the schedule.

The average is a module (``ema.module``) with a ``state_dict`` (including the number of
updates), saved in checkpoints and restored on resume.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["ModelEma", "ema_weights"]


class ModelEma:
    """EMA of ``model``'s parameters and floating buffers.

    Args:
        model: the (unwrapped) model being trained.
        decay: the decay ``d`` of ``ema ← d·ema + (1 − d)·w``.
        warmup: use ``min(d, (1 + n) / (10 + n))`` at the ``n``-th update (``n`` from 0:
            the first update copies the weights).
        every: update every this many calls of :meth:`step` (optimizer steps).
    """

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = True,
                 every: int = 1) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        self.decay, self.warmup, self.every = float(decay), bool(warmup), every
        self.calls = 0
        self.module = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        self.module.requires_grad_(False)

    def current_decay(self, n: int) -> float:
        """The decay used at the ``n``-th update (``n = 0``: a copy)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + n) / (10.0 + n))

    def _average(self, ema: list[Tensor], current: list[Tensor], n_averaged: Tensor) -> None:
        get_ema_multi_avg_fn(self.current_decay(int(n_averaged)))(ema, current, n_averaged)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average ``model``'s current weights in now."""
        self.module.update_parameters(model)
        from ..layers._base import TemperatureMixin

        for mine, theirs in zip(self.module.module.modules(), model.modules(), strict=True):
            if isinstance(mine, TemperatureMixin):
                mine.temperature.copy_(theirs.temperature)

    def step(self, model: nn.Module) -> None:
        """Called after every optimizer step; updates every ``every`` calls."""
        self.calls += 1
        if self.calls % self.every == 0:
            self.update(model)

    @property
    def num_updates(self) -> int:
        return int(self.module.n_averaged)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.calls = int(state["calls"])


def ema_weights(state: dict[str, Any]) -> dict[str, Tensor]:
    """The averaged model's plain ``state_dict`` from :meth:`ModelEma.state_dict` (as
    stored under ``"ema"`` in a checkpoint)."""
    return {k[len("module."):]: v for k, v in state["module"].items()
            if k.startswith("module.")}
