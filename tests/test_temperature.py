"""The temperature schedule of SPEC §2: 30 → 1 linearly over the first 10 epochs, then 1."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import a2d2c
from a2d2c import A2D2Conv2d, TemperatureScheduler


def _net() -> nn.Module:
    return nn.Sequential(A2D2Conv2d(3, 4, 3), nn.ReLU(), nn.Sequential(A2D2Conv2d(4, 4, 1)),
                         nn.Conv2d(4, 2, 1))


def _taus(model):
    return [float(m.temperature) for m in model.modules() if isinstance(m, A2D2Conv2d)]


def test_set_temperature_reaches_every_dynamic_layer_by_type():
    net = _net()
    assert a2d2c.set_temperature(net, 12.5) == 2
    assert _taus(net) == [12.5, 12.5]
    assert a2d2c.get_temperature(net) == 12.5
    assert a2d2c.get_temperature(nn.Conv2d(1, 1, 1)) is None
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got -1"):
        a2d2c.set_temperature(net, -1)


def test_schedule_values_follow_the_paper():
    net = _net()
    sched = TemperatureScheduler(net, steps_per_epoch=20)  # 30 -> 1 over 200 steps
    assert _taus(net) == [30.0, 30.0]
    seen = [sched.step() for _ in range(260)]
    assert seen[99] == pytest.approx(30 - 29 * 100 / 200)  # after 100 steps: halfway
    assert seen[199] == pytest.approx(1.0)
    assert all(t == pytest.approx(1.0) for t in seen[199:])
    assert all(a >= b for a, b in itertools.pairwise(seen))  # monotone
    assert _taus(net) == [pytest.approx(1.0)] * 2


def test_schedule_state_dict_resumes_exactly():
    net, other = _net(), _net()
    sched = TemperatureScheduler(net, steps_per_epoch=7, start=10, end=2, anneal_epochs=3)
    for _ in range(9):
        sched.step()
    resumed = TemperatureScheduler(other, steps_per_epoch=1)
    resumed.load_state_dict(sched.state_dict())
    assert _taus(other) == _taus(net)
    assert [resumed.step() for _ in range(15)] == [sched.step() for _ in range(15)]
    # the state is plain data: it survives torch.save / torch.load(weights_only=True)
    import io
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True) == sched.state_dict()


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(steps_per_epoch=0), "steps_per_epoch must be an int >= 1"),
    (dict(steps_per_epoch=5, start=0.0), "start and end temperatures must be > 0"),
    (dict(steps_per_epoch=5, anneal_epochs=-1), "anneal_epochs must be >= 0"),
])
def test_schedule_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        TemperatureScheduler(_net(), **kwargs)
