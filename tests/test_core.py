"""One engine core: checkpoint reading/comparison, load_model, logging, progress lines."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import a2d2c
from _engine_helpers import tiny_config
from a2d2c.engine import CheckpointError, fit
from a2d2c.engine.checkpoint import compare_state, read_weights, strip_prefixes


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def library_logger(monkeypatch):
    """The "a2d2c" logger as a library sees it (no CLI handler from an earlier test)."""
    logger = logging.getLogger("a2d2c")
    monkeypatch.setattr(logger, "handlers", [logging.NullHandler()])
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    return logger


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    a.eval()
    b.eval()
    with torch.no_grad():
        torch.manual_seed(5)
        ya = a(x)
        torch.manual_seed(5)
        yb = b(x)
    return torch.equal(ya, yb)


def test_load_model_rebuilds_from_the_checkpoint_alone(tmp_path, monkeypatch, library_logger):
    run = fit(tiny_config(tmp_path / "run", train={"epochs": 1}))
    monkeypatch.chdir(tmp_path)  # nothing of the recipe around
    for name in ("last.pt", "best.pt", "model.safetensors"):
        path = run.output_dir / name
        if name.endswith(".safetensors") and not path.is_file():
            continue  # safetensors not installed
        model = a2d2c.load_model(path)
        assert not model.training
        assert _same_outputs(model, run.model), name
    with pytest.raises(CheckpointError, match="not found"):
        a2d2c.load_model(tmp_path / "nothing.pt")


def test_read_weights_cleans_wrapper_prefixes_and_compare_reports(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    sd = net.state_dict()
    wrapped = {f"module._orig_mod.{k}": v for k, v in sd.items()}
    torch.save({"state_dict": wrapped, "epoch": 3}, tmp_path / "w.pth")
    state, meta = read_weights(tmp_path / "w.pth")
    assert set(state) == set(sd) and meta == {"epoch": 3}
    assert compare_state(net, state).ok
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.BatchNorm2d(5),
                                torch.nn.ReLU())
    del state["1.running_var"]
    state["extra.weight"] = torch.zeros(1)
    diff = compare_state(other, state)
    assert diff.missing == ["1.running_var"] and diff.unexpected == ["extra.weight"]
    assert ("0.weight", (4, 3, 3, 3), (5, 3, 3, 3)) in diff.shapes
    assert "1 missing" in diff.describe() and "1 unexpected" in diff.describe()
    assert strip_prefixes({"module.module.a": 1, "b": 2}) == {"a": 1, "b": 2}
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_weights(tmp_path / "junk.pth")


def test_fit_is_quiet_as_a_library(tmp_path, capfd, library_logger):
    fit(tiny_config(tmp_path / "q", train={"epochs": 1}))
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_fit_logs_to_the_a2d2c_logger_with_progress_lines(tmp_path, library_logger):
    sink = _Collect()
    library_logger.addHandler(sink)
    library_logger.setLevel(logging.INFO)
    # 32 images / batch 8 = 4 steps per epoch; a line every 2 steps (stdout is captured,
    # not a terminal, as under SLURM or nohup)
    fit(tiny_config(tmp_path / "p", train={"epochs": 2, "progress": True, "log_every": 2}))
    steps = [line.split(":")[0] for line in sink.lines if " step " in line]
    assert steps == ["epoch 1/2 step 2/4", "epoch 1/2 step 4/4", "epoch 2/2 step 2/4",
                     "epoch 2/2 step 4/4"]
    assert any(line.startswith("epoch 2/2: train loss") for line in sink.lines)
    assert any(line.startswith("model resnet18_a2d2c") for line in sink.lines)


def test_cli_shows_the_log_on_stdout(tmp_path, capsys):
    from a2d2c.cli import main

    cfg_path = tmp_path / "tiny.yaml"
    import yaml

    from a2d2c.engine import config_to_dict

    d = config_to_dict(tiny_config(tmp_path / "cli", train={"epochs": 1}))
    cfg_path.write_text(yaml.safe_dump(d))
    assert main(["train", "--config", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1: train loss" in out and str(Path(tmp_path / "cli")) in out


# --------------------------------------------------------- one override syntax
def test_detection_takes_the_engine_override_syntax():
    from a2d2c.detection import load_config

    new = load_config("maskrcnn_shapes_tiny", ["--train.lr", "0.005", "--train.lr_steps=[3,4]",
                                               "--model.pretrained", "null"])
    old = load_config("maskrcnn_shapes_tiny", ["train.lr=0.005", "train.lr_steps=[3, 4]",
                                               "model.pretrained=null"])
    assert new == old
    assert (new.train.lr, new.train.lr_steps, new.model.pretrained) == (0.005, [3, 4], None)


def test_detect_profile_cli_accepts_section_key_options(capsys):
    from a2d2c.cli import main

    assert main(["detect", "profile", "--config", "maskrcnn_shapes_tiny", "--num-classes", "3",
                 "--size", "64", "64", "--model.backbone", "resnet18_a2d2c_plus"]) == 0
    assert capsys.readouterr().out.startswith("resnet18_a2d2c_plus:")
    assert main(["detect", "make-shapes", "--out", "x", "--train.lr", "1"]) == 2
    assert "unrecognized arguments: --train.lr 1" in capsys.readouterr().err


def test_study_overrides_use_the_same_syntax(monkeypatch):
    import a2d2c.study
    from a2d2c.cli import main

    seen = {}

    def fake_run_study(spec, **kw):
        seen["extra"] = kw["extra"]
        raise SystemExit(0)

    monkeypatch.setattr(a2d2c.study, "run_study", fake_run_study)
    with pytest.raises(SystemExit):
        main(["study", "main", "--seeds", "0", "--train.device", "cpu", "--set",
              "data.workers=2"])
    assert seen["extra"] == ["--train.device=cpu", "--data.workers=2"]


# --------------------------------------------------------- one placement vocabulary
CONV_TYPES = ["a2d2c", "a2d2c+", "condconv", "dynamicconv", "odconv", "dcd"]


def test_convert_and_the_builders_share_one_placement_table():
    import torchvision
    from torch import nn

    import a2d2c.models

    assert a2d2c.PLACEMENTS is a2d2c.models.PLACEMENTS
    for placement in ("all", "every", "no-stem", "initial", "median", "3x3"):
        tv = a2d2c.convert(torchvision.models.resnet18(), placement=placement, conv="odconv",
                           num_kernels=2)
        converted = sorted(n for n, m in tv.named_modules() if isinstance(m, a2d2c.ODConv2d))
        with torch.device("meta"):
            ours = a2d2c.create_model("resnet18", conv="odconv", placement=placement,
                                      num_kernels=2)
        assert converted == sorted(ours.dynamic_convs), placement
        assert converted and all(type(tv.get_submodule(n)) is not nn.Conv2d for n in converted)
    # "all" is ResNet's sixteen 3x3 block convs in both (not every conv, as it once was)
    assert len(converted) > 0
    with torch.device("meta"):
        assert len(a2d2c.create_model("resnet18_a2d2c").dynamic_convs) == 16


@pytest.mark.parametrize("conv", CONV_TYPES)
def test_convert_any_conv_type_starts_from_the_trained_function(conv):
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = net(x)
    kw = {} if conv == "dcd" else {"num_kernels": 3}
    a2d2c.convert(net, placement="3x3", conv=conv, noise=0.0, **kw)
    layer_type = type(a2d2c.create_conv2d(conv, 3, 8, 3, **kw))
    assert [type(m) for m in net[::2]] == [layer_type] * 3
    a2d2c.set_temperature(net, 1e9)  # uniform attention where the type has a temperature
    with torch.no_grad():
        out = net(x)
    # noise 0: every type starts as the trained convolutions (layers/transfer.py's rule)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_registry_a2d2c_runs_auto_and_takes_impl():
    with torch.device("meta"):
        m = a2d2c.create_model("resnet18_a2d2c")
        assert {m.get_submodule(n).impl for n in m.dynamic_convs} == {"auto"}
        m = a2d2c.create_model("resnet18_a2d2c", impl="plus")
        assert {m.get_submodule(n).impl for n in m.dynamic_convs} == {"plus"}
    with pytest.raises(ValueError, match="impl"):
        a2d2c.create_model("resnet18_a2d2c", impl="fastest", width_mult=0.125)
