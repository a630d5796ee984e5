"""Attention diagnostics (SPEC §7, issue 16) against figures computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from a2d2c.diagnostics import attention_stats, dynamic_layers
from a2d2c.layers import (
    A2D2Conv2d,
    CondConv2d,
    DCDConv2d,
    DCDLinear,
    DynamicConv2d,
    ODConv2d,
)


def _hand_layer(impl: str) -> A2D2Conv2d:
    """1x1 A²D²C, C = 1, O = 2, K = 2, no bias: p̄[b,k,o] = W[k,o]·c_b for a constant image
    of value c_b. Channel 0 has kernels (+1, −1), channel 1 (−1, +1)."""
    layer = A2D2Conv2d(1, 2, 1, bias=False, num_kernels=2, sampling="global", impl=impl)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).view(2, 2, 1, 1, 1))
    return layer


@pytest.mark.parametrize("impl", ["kernel", "plus"])
def test_hand_built_layer_known_figures(impl: str) -> None:
    # sample 0: c = ln(3)/2, logits (c, −c) → π(channel 0) = (3/4, 1/4), channel 1 reversed;
    # sample 1: c = 0 → π = (1/2, 1/2) for both channels.
    c = math.log(3) / 2
    x = torch.stack([torch.full((1, 3, 3), c), torch.zeros(1, 3, 3)])
    report = attention_stats(_hand_layer(impl), x)
    assert len(report) == 1
    r = report.rows[0]
    assert (r.kind, r.head, r.shape, r.samples) == ("A2D2Conv2d", "pi", "2x2", 2)
    h0 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert r.entropy_ratio == pytest.approx((h0 + 1.0) / 2, abs=1e-6)
    assert r.mean_max == pytest.approx((0.75 + 0.5) / 2, abs=1e-6)
    # every π value is 3/4 or 1/4 in sample 0 and 1/2 in sample 1: population sd 1/8
    assert r.sample_sd == pytest.approx(1 / 8, abs=1e-6)
    # sample 0: the two channels' π_k are (3/4, 1/4): sd 1/4; sample 1: 0 → mean 1/8
    assert r.channel_sd == pytest.approx(1 / 8, abs=1e-6)
    # y = c·(π_1 − π_2) per channel (up to sign): sample 0 c/2, sample 1 0 (c = 0); frozen
    # to the batch mean π = (5/8, 3/8): c/4 and 0, so ‖Δy‖/‖y‖ = (c/4)/(c/2) = 1/2
    assert r.output_change == pytest.approx(0.5, abs=1e-6)


def test_batches_accumulate_like_one_batch() -> None:
    c = math.log(3) / 2
    x = torch.stack([torch.full((1, 3, 3), c), torch.zeros(1, 3, 3)])
    layer = _hand_layer("plus")
    split = attention_stats(layer, [(x[:1], 0), (x[1:], 1)]).rows[0]
    assert split.sample_sd == pytest.approx(1 / 8, abs=1e-6)  # pooled over the batches
    assert split.entropy_ratio == pytest.approx(attention_stats(layer, x).rows[0].entropy_ratio)
    assert split.output_change == 0.0  # a batch of one is its own mean
    assert attention_stats(layer, [x, x], max_samples=3).samples == 3


class _AllTypes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a2d2c = A2D2Conv2d(3, 4, 3, padding=1, sampling="global")
        self.cond = CondConv2d(4, 4, 3, padding=1, num_kernels=4)
        self.dy = DynamicConv2d(4, 4, 3, padding=1)
        self.od = ODConv2d(4, 4, 3, padding=1)
        self.dcd = DCDConv2d(4, 4, 3, padding=1)
        self.fc = DCDLinear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.dcd(self.od(self.dy(self.cond(self.a2d2c(x))))))
        return self.fc(x.mean((2, 3)))


def _make_uniform(model: _AllTypes) -> None:
    """Attentions that cannot depend on the input: zero the last FC of every head, and
    give A²D²C identical kernels."""
    with torch.no_grad():
        w = model.a2d2c.weight
        w.copy_(w[:1].expand_as(w))
        model.a2d2c.bias.copy_(model.a2d2c.bias[:1].expand_as(model.a2d2c.bias))
        for fc in (model.cond.routing, model.dy.fc2, model.od.kernel_fc, model.od.channel_fc,
                   model.od.filter_fc, model.od.spatial_fc, model.dcd.fc_scale,
                   model.dcd.fc_phi, model.fc.fc_scale, model.fc.fc_phi):
            fc.weight.zero_()
            if fc.bias is not None:
                fc.bias.zero_()


def test_every_layer_type_uniform_attention() -> None:
    torch.manual_seed(0)
    model = _AllTypes()
    _make_uniform(model)
    model.train()
    report = attention_stats(model, torch.randn(6, 3, 8, 8))
    assert model.training  # restored
    got = {(r.layer, r.head) for r in report.rows}
    assert got == {("a2d2c", "pi"), ("cond", "routing"), ("dy", "kernel"), ("od", "kernel"),
                   ("od", "channel"), ("od", "filter"), ("od", "spatial"), ("dcd", "lambda"),
                   ("dcd", "phi"), ("fc", "lambda"), ("fc", "phi")}
    for r in report.rows:
        assert r.sample_sd == pytest.approx(0.0, abs=1e-6), r
        assert r.output_change == pytest.approx(0.0, abs=1e-5), r
        if r.entropy_ratio is not None:
            assert r.entropy_ratio == pytest.approx(1.0, abs=1e-6), r
            assert r.mean_max == pytest.approx(0.25, abs=1e-6), r
    assert report["od", "kernel"].channel_sd is None and report["dcd", "lambda"].channel_sd == 0
    assert set(dynamic_layers(model)) == {"a2d2c", "cond", "dy", "od", "dcd", "fc"}


def test_every_layer_type_dynamic_attention_is_seen() -> None:
    """Fresh layers have input-dependent attention: sd > 0 and the output changes."""
    torch.manual_seed(0)
    model = _AllTypes()
    with torch.no_grad():
        for fc in (model.cond.routing, model.dy.fc2, model.od.kernel_fc, model.od.filter_fc):
            fc.weight.mul_(20)
    x = torch.randn(8, 3, 8, 8) * torch.linspace(0.2, 3, 8).view(8, 1, 1, 1)
    before = model(x)
    report = attention_stats(model, x)
    torch.testing.assert_close(model(x), before)  # the layers are left untouched
    for r in report.rows:
        assert r.sample_sd > 1e-4, r
        assert r.output_change > 1e-5, r
    # the routing's K sigmoids are normalised for the entropy: a ratio in (0, 1]
    assert 0 < report["cond", "routing"].entropy_ratio <= 1
    text = report.to_text()
    assert "od" in text and "spatial" in text and "H/logK" in text
    assert "pi:" in report.summary_line()


def test_no_dynamic_layers_and_bad_input() -> None:
    assert len(attention_stats(nn.Conv2d(1, 1, 1), torch.randn(2, 1, 3, 3))) == 0
    with pytest.raises(TypeError, match="attention_stats expects"):
        attention_stats(nn.Conv2d(1, 1, 1), ["nope"])


def test_engine_records_diagnostics_per_epoch(tmp_path) -> None:
    import io
    import json
    import logging

    from _engine_helpers import tiny_config
    from a2d2c.engine import fit

    # fit() logs to the "a2d2c" logger (quiet by default; the CLI may have set it not to
    # propagate), so listen on that logger itself
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logger = logging.getLogger("a2d2c")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        fit(tiny_config(tmp_path / "on", train={"attention_stats": 8}))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    rows = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").read_text()
            .splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert 0 < row["attn_pi_entropy_ratio"] <= 1 + 1e-9
        assert row["attn_pi_sample_sd"] >= 0 and row["attn_pi_output_change"] >= 0
    assert "| attn pi: H/logK" in buf.getvalue()
    fit(tiny_config(tmp_path / "off", train={"attention_stats": 0, "epochs": 1}))
    row = json.loads((tmp_path / "off" / "metrics.jsonl").read_text())
    assert not any(k.startswith("attn_") for k in row)

