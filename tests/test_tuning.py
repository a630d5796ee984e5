"""Measured path choice (``a2d2c.ops.tuning``): exact, once per signature, invisible."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import a2d2c
from _mixed_oracle import oracle
from a2d2c.layers import a2d2c as a2d2c_module
from a2d2c.layers.factory import create_conv2d
from a2d2c.ops import mixed_conv, mixed_conv2d, tuning

LAYERS = ("a2d2c", "condconv", "dynamicconv", "odconv")


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts with an empty cache, benchmarking off, and leaves it so."""
    tuning.clear_cache()
    yield
    tuning.set_benchmark(False)
    tuning.clear_cache()


class FakeClock:
    """A timer that only the slowed paths advance: each of their calls costs ``cost``."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def slow(self, module, name: str, cost: float, monkeypatch) -> None:
        real = getattr(module, name)

        def slowed(*args, **kwargs):
            self.now += cost
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, slowed)


def test_op_under_benchmark_matches_the_loop_oracle_with_all_gradients():
    """Whatever path is measured fastest, the op's output and every gradient stay those of
    the float64 loop oracle (ODConv-style per-tap coefficients with both scales)."""
    torch.manual_seed(0)
    b, c, o, k = 3, 4, 6, 2
    x = torch.randn(b, c, 7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(k, o, c, 3, 3, dtype=torch.float64, requires_grad=True)
    for coeff_shape in ((b, k), (b, k, o), (b, k, 3, 3)):
        a = torch.rand(*coeff_shape, dtype=torch.float64, requires_grad=True)
        s_in = torch.rand(b, c, dtype=torch.float64, requires_grad=True)
        s_out = torch.rand(b, o, dtype=torch.float64, requires_grad=True)
        args = (x, w, a, None, (1, 2), (1, 0), (1, 1), 1, s_in, s_out)
        want = oracle(*args)
        with tuning.benchmark():
            got = mixed_conv2d(x, w, a, None, (1, 2), (1, 0), in_scale=s_in, out_scale=s_out)
        torch.testing.assert_close(got, want)
        g = torch.randn_like(want)
        grads = torch.autograd.grad(got, (x, w, a, s_in, s_out), g)
        refs = torch.autograd.grad(want, (x, w, a, s_in, s_out), g)
        for mine, ref in zip(grads, refs, strict=True):
            torch.testing.assert_close(mine, ref)
    kinds = [key[0] for key in tuning.cache_info()]
    assert kinds.count("mixed_conv2d") == 3  # one signature per coefficient shape
    # the plus form's responses, measured once: the same (x, weight) for (B, K) and (B, K, O)
    assert kinds.count("plus_responses") == 1


def test_tuned_choice_takes_the_fastest_and_measures_once():
    clock = FakeClock()
    costs = {"kernel": 3.0, "unfold": 1.0, "plus": 2.0}
    runs: list[str] = []

    def run(impl: str) -> None:
        runs.append(impl)
        clock.now += costs[impl]

    orig = tuning._timer
    tuning._timer = clock
    try:
        with tuning.benchmark(repeats=2):
            assert tuning.tuned_choice("k", list(costs), run, torch.device("cpu")) == "unfold"
            assert len(runs) == 3 * (1 + 2)  # a warm-up and two timed runs per path
            assert tuning.tuned_choice("k", list(costs), run, torch.device("cpu")) == "unfold"
            assert len(runs) == 9  # cached: nothing runs again
    finally:
        tuning._timer = orig
    m = tuning.cache_info()["k"]
    assert m.choice == "unfold" and m.seconds == costs


def test_failing_paths_are_skipped_only_where_declared_fallible():
    def run(impl: str) -> None:
        if impl == "triton":
            raise RuntimeError("no compiler")

    dev = torch.device("cpu")
    assert tuning.tuned_choice("a", ["kernel", "triton"], run, dev, fallible=["triton"]) == \
        "kernel"
    assert math.isinf(tuning.cache_info()["a"].seconds["triton"])
    with pytest.raises(RuntimeError, match="no compiler"):
        tuning.tuned_choice("b", ["kernel", "triton"], run, dev)


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_follow_the_measurement(layer, monkeypatch):
    """With the grouped per-sample convolution made 'slow' (a fake clock only it
    advances), every layer stops running the kernel path, in training and inference, and
    gives the same output and gradients as the cost model's choice."""
    clock = FakeClock()
    monkeypatch.setattr(tuning, "_timer", clock)
    seen: list[str] = []
    real = mixed_conv.per_sample_conv

    def spy(*args, **kwargs):
        seen.append(kwargs.get("method", args[8] if len(args) > 8 else "kernel"))
        clock.now += 1.0 if seen[-1] == "kernel" else 0.0
        return real(*args, **kwargs)

    monkeypatch.setattr(mixed_conv, "per_sample_conv", spy)
    torch.manual_seed(0)
    m = create_conv2d(layer, 8, 8, 3, 1, 1, num_kernels=2).double()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    ref = kernel_form(m, x)
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, m.weight))
    seen.clear()
    with tuning.benchmark():
        torch.manual_seed(1)  # the same sampled positions (measuring draws no numbers)
        y = m(x)
        assert tuning.cache_info(), "nothing was measured"
        chosen = {v.choice for v in tuning.cache_info().values()}
        assert "kernel" not in chosen
        seen.clear()
        y = m(x)  # cached: the measured path runs, once
        assert "kernel" not in seen and len(seen) <= 1
        grads = torch.autograd.grad(y.square().sum(), (x, m.weight))
        with torch.no_grad():
            m(x)
    torch.testing.assert_close(y, ref)
    for mine, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(mine, want)
    modes = {key[3] for key in tuning.cache_info()}
    assert modes == {True, False}  # training and inference are measured apart


def kernel_form(m, x):
    """The layer's output with the kernel form forced (the reference)."""
    m.impl = "kernel"
    try:
        return m(x)
    finally:
        m.impl = "auto"


def test_measuring_leaves_no_trace():
    """No gradient accumulated, no random number drawn, no autograd graph kept."""
    torch.manual_seed(0)
    m = a2d2c.A2D2Conv2d(8, 8, 3, padding=1, num_kernels=2, num_points=5)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    torch.manual_seed(3)
    ref = m(x)
    state = torch.get_rng_state()
    torch.manual_seed(3)
    with tuning.benchmark():
        y = m(x)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(y, ref)  # same positions sampled
    assert x.grad is None and all(p.grad is None for p in m.parameters())


@pytest.mark.parametrize("layer", ["a2d2c", "condconv"])
def test_first_measurement_inside_activation_checkpointing(layer):
    """torch.utils.checkpoint (non-reentrant) recomputes the forward in backward and
    matches the tensors it saved one by one: the measuring runs must not be among them."""
    torch.manual_seed(0)
    m = create_conv2d(layer, 8, 8, 3, 1, 1, num_kernels=2)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    torch.manual_seed(1)
    ref = m(x)
    (gx,) = torch.autograd.grad(ref.sum(), x)
    with tuning.benchmark():
        torch.manual_seed(1)
        y = checkpoint(m, x, use_reentrant=False)
        (gy,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(gy, gx)


def test_nothing_is_measured_while_tracing(monkeypatch):
    """Graph capture keeps the cost model's traceable choice (one graph for every batch)."""
    monkeypatch.setattr(mixed_conv, "_is_tracing", lambda: True)
    monkeypatch.setattr(a2d2c_module, "_is_tracing", lambda: True)
    with tuning.benchmark():
        for layer in ("a2d2c", "condconv"):
            create_conv2d(layer, 4, 4, 3, 1, 1, num_kernels=2)(torch.randn(2, 4, 5, 5))
    assert tuning.cache_info() == {}


def test_signature_separates_what_changes_speed():
    x = torch.randn(2, 4, 5, 5)
    base = tuning.signature("op", [x])
    assert tuning.signature("op", [torch.randn(3, 4, 5, 5)]) != base  # batch size
    assert tuning.signature("op", [x.double()]) != base  # dtype
    assert tuning.signature("op", [x.contiguous(memory_format=torch.channels_last)]) != base
    assert tuning.signature("op", [x.clone().requires_grad_()]) != base
    with torch.no_grad():
        assert tuning.signature("op", [x]) != base  # grad mode
    assert tuning.signature("op", [x.clone()]) == base  # same shape, dtype, format, mode
    assert tuning.signature("op", [x], (1, 1)) != tuning.signature("op", [x], (2, 2))


def test_switches_and_cache_handling():
    assert not tuning.is_benchmark_enabled()
    with tuning.benchmark():
        assert tuning.is_benchmark_enabled()
        with tuning.benchmark(False):
            assert not tuning.is_benchmark_enabled()
        assert tuning.is_benchmark_enabled()
    assert not tuning.is_benchmark_enabled()
    with pytest.raises(TypeError, match="True or False"):
        tuning.set_benchmark("yes")
    with pytest.raises(ValueError, match="repeats must be an int >= 1"):
        tuning.set_benchmark(True, repeats=0)
    assert not tuning.is_benchmark_enabled()
    tuning.load_cache({"k": ("plus", {"plus": 1.0, "kernel": 2.0})})
    assert tuning.cache_info()["k"] == tuning.Measured("plus", {"plus": 1.0, "kernel": 2.0})
    tuning.load_cache({"k": ("kernel", {})})  # an entry already here is kept
    assert tuning.cache_info()["k"].choice == "plus"
    tuning.clear_cache()
    assert tuning.cache_info() == {}


def test_measurements_survive_pickling_into_a_later_process():
    """cache_info() -> pickle -> load_cache(): a later run skips what was measured."""
    import pickle

    conv = create_conv2d("condconv", 4, 4, 3, 1, 1, num_kernels=2)
    x = torch.randn(2, 4, 5, 5)
    with tuning.benchmark():
        conv(x)
    saved = pickle.loads(pickle.dumps(tuning.cache_info()))
    tuning.clear_cache()
    tuning.load_cache(saved)
    runs: list[str] = []
    real = tuning._time_path
    tuning._time_path = lambda *a, **k: runs.append(a[1]) or real(*a, **k)
    try:
        with tuning.benchmark():
            conv(x)
    finally:
        tuning._time_path = real
    assert runs == [] and tuning.cache_info() == saved


def test_train_impl_benchmark_turns_measuring_on_for_the_run(tmp_path, caplog):
    from _engine_helpers import tiny_config
    from a2d2c.engine import fit

    seen: list[bool] = []
    log = logging.getLogger("a2d2c")  # the CLI's setup (earlier tests) may stop propagation
    log.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger="a2d2c"):
            fit(tiny_config(tmp_path / "run", train={"epochs": 1, "impl_benchmark": True}),
                on_step=lambda step: seen.append(tuning.is_benchmark_enabled()))
    finally:
        log.removeHandler(caplog.handler)
    line = next(r.getMessage() for r in caplog.records if "impl benchmark" in r.getMessage())
    n = sum(key[0] != "plus_responses" for key in tuning.cache_info())
    assert f"{n} shapes measured: " in line and n > 0
    assert seen and all(seen)
    assert not tuning.is_benchmark_enabled()  # restored after the run
    kinds = {key[0] for key in tuning.cache_info()}
    assert "A2D2Conv2d" in kinds


def test_bench_tuned_variants_keep_their_own_measurements(monkeypatch):
    """CondConv and DynamicConv make the same op call (one signature): in a2d2c bench each
    tuned variant must still run what *it* measured, not the other's choice."""
    from a2d2c.tools.benchmark import Case, _make_runner, list_variants

    case = Case("t", "layer", "train", 2, 8, 8)
    runners = {v.conv: _make_runner(case, v, torch.device("cpu"), None, False, seed=0)
               for v in list_variants(["condconv:tuned", "dynamicconv:tuned"])
               if v.label != "static"}
    for r in runners.values():
        r.step()  # measures (the path, and how the plus form computes its responses)
        assert sorted(k[0] for k in r.measured) == ["mixed_conv2d", "plus_responses"]
    key = next(k for k in runners["condconv"].measured if k[0] == "mixed_conv2d")
    assert key in runners["dynamicconv"].measured  # the same signature
    runners["condconv"].measured[key] = tuning.Measured("kernel", {})
    runners["dynamicconv"].measured[key] = tuning.Measured("plus", {})
    calls: list[int] = []
    real = mixed_conv._plus
    monkeypatch.setattr(mixed_conv, "_plus", lambda *a, **k: calls.append(1) or real(*a, **k))
    for conv, want in (("condconv", 0), ("dynamicconv", 1), ("condconv", 0)):
        calls.clear()
        runners[conv].step()
        assert len(calls) == want, conv
