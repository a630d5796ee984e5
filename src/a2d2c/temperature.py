"""Softmax temperature: set it on a whole model, or anneal it per iteration (SPEC §2)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .layers._base import TemperatureMixin

__all__ = ["TemperatureScheduler", "get_temperature", "set_temperature"]


def _layers(model: nn.Module) -> list[TemperatureMixin]:
    return [m for m in model.modules() if isinstance(m, TemperatureMixin)]


def set_temperature(model: nn.Module, tau: float) -> int:
    """Set ``τ`` on every dynamic layer of ``model`` (found by type); returns how many."""
    layers = _layers(model)
    for layer in layers:
        layer.set_temperature(tau)
    return len(layers)


def get_temperature(model: nn.Module) -> float | None:
    """The temperature of the first dynamic layer, or ``None`` if there is none."""
    layers = _layers(model)
    return float(layers[0].temperature) if layers else None


class TemperatureScheduler:
    """Linear annealing of ``τ`` from ``start`` to ``end`` over the first epochs.

    The paper (§4.3, after DynamicConv) anneals 30 → 1 over the first 10 epochs; the
    schedule here is stepped once per *iteration* so that it is smooth::

        sched = TemperatureScheduler(model, steps_per_epoch=len(loader))
        for x, y in loader:
            ...; optimizer.step(); sched.step()

    ``τ(t) = start + (end - start) · min(t / (anneal_epochs · steps_per_epoch), 1)``.
    The temperature is applied at construction (``τ(0) = start``) and after every
    :meth:`step`; :meth:`state_dict`/:meth:`load_state_dict` make it resumable.
    """

    def __init__(self, model: nn.Module, steps_per_epoch: int, *, start: float = 30.0,
                 end: float = 1.0, anneal_epochs: float = 10.0) -> None:
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or (
            steps_per_epoch < 1
        ):
            raise ValueError(f"steps_per_epoch must be an int >= 1, got {steps_per_epoch!r}")
        if not (start > 0 and end > 0):
            raise ValueError(f"start and end temperatures must be > 0, got {start}, {end}")
        if not anneal_epochs >= 0:
            raise ValueError(f"anneal_epochs must be >= 0, got {anneal_epochs}")
        self.model = model
        self.steps_per_epoch = steps_per_epoch
        self.start, self.end, self.anneal_epochs = float(start), float(end), float(anneal_epochs)
        self.last_step = 0
        self._apply()

    @property
    def total_steps(self) -> float:
        return self.anneal_epochs * self.steps_per_epoch

    def value(self, step: int | None = None) -> float:
        """``τ`` at ``step`` (default: now)."""
        t = self.last_step if step is None else step
        frac = 1.0 if self.total_steps == 0 else min(t / self.total_steps, 1.0)
        return self.start + (self.end - self.start) * frac

    def step(self) -> float:
        self.last_step += 1
        return self._apply()

    def _apply(self) -> float:
        tau = self.value()
        set_temperature(self.model, tau)
        return tau

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "steps_per_epoch": self.steps_per_epoch,
                "start": self.start, "end": self.end, "anneal_epochs": self.anneal_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self.steps_per_epoch = int(state["steps_per_epoch"])
        self.start, self.end = float(state["start"]), float(state["end"])
        self.anneal_epochs = float(state["anneal_epochs"])
        self._apply()
