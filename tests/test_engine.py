"""The training engine: config flow, schedules, exact resume, signals, checkpoints, eval."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import a2d2c
from _engine_helpers import tiny_config
from a2d2c.cli import main as cli_main
from a2d2c.engine import (
    CheckpointError,
    ConfigError,
    NonFiniteLossError,
    ScheduleConfig,
    StopRequest,
    epoch_schedule,
    evaluate_checkpoint,
    fit,
    load_checkpoint,
    load_config,
    save_checkpoint,
    train_one_epoch,
)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------ config
def test_recipe_overrides_and_base_includes(tmp_path):
    (tmp_path / "base.yaml").write_text("optim: {lr: 0.5, momentum: 0.8}\ntrain: {epochs: 7}\n")
    (tmp_path / "run.yaml").write_text("_base_: base.yaml\noptim: {lr: 0.25}\n"
                                       "model: {kwargs: {num_kernels: 2}}\n")
    cfg = load_config(tmp_path / "run.yaml",
                      ["--optim.momentum", "0.5", "--schedule.milestones=[2, 4]",
                       "--model.kwargs.stem", "cifar", "--data.root", "null"])
    assert cfg.optim.lr == 0.25 and cfg.optim.momentum == 0.5 and cfg.train.epochs == 7
    assert cfg.schedule.milestones == [2, 4]
    assert cfg.model.kwargs == {"num_kernels": 2, "stem": "cifar"}
    assert cfg.data.root is None


@pytest.mark.parametrize("overrides, match", [
    (["--optim.lrr", "0.1"], r"unknown config key 'optim.lrr'; did you mean optim.lr"),
    (["--optim.lr", "fast"], r"optim.lr='fast' has the wrong type"),
    (["--optim.lr", "-1"], r"optim.lr=-1.0 is invalid: must be > 0"),
    (["--train.amp", "fp16", "--train.device", "cpu"], r"fp16 mixed precision needs CUDA"),
    (["--optim.name", "adamw", "--optim.nesterov", "true"], r"optim.nesterov"),
    (["--schedule.milestones", "[60, 30]"], r"schedule.milestones"),
    (["--schedule.warmup_epochs", "200"], r"schedule.warmup_epochs=200"),
    (["--data.name", "cifar10"], r"unknown dataset 'cifar10'; did you mean 'cifar100'"),
    (["--data.name", "cifar100", "--data.num_classes", "10"], r"data.num_classes"),
    (["--model.name", "resnet18_a2dc"], r"not a registered model; did you mean"),
    (["--model.kwargs.num_kernel", "4"], r"model.kwargs.num_kernel .*did you mean 'num_kernels'"),
    (["--model.kwargs.num_classes", "4"], r"comes from the dataset"),
    (["--train.amp", "fp8"], r"train.amp='fp8' is invalid"),
    (["--model.sync_bn", "true", "--train.device", "cpu"], r"SyncBatchNorm runs on CUDA only"),
])
def test_invalid_configs_fail_before_any_data(overrides, match, tmp_path):
    # the data root does not exist: validation must fail first, with its own message
    base = ["--data.root", str(tmp_path / "missing")]
    with pytest.raises(ConfigError, match=match):
        load_config(None, base + overrides)


def test_cli_reports_config_errors(capsys):
    assert cli_main(["train", "--optim.momentum", "1.5"]) == 2
    assert "optim.momentum=1.5 is invalid" in capsys.readouterr().err


def test_cli_print_config_resolves_the_default_recipe(capsys):
    assert cli_main(["train", "--print-config", "--train.epochs", "1"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data"]["name"] == "fashion_mnist" and cfg["train"]["epochs"] == 1
    assert cfg["model"]["name"].startswith("resnet18_a2d2c")


# --------------------------------------------------------------------- schedules
def _lrs(cfg: ScheduleConfig, epochs: int, steps: int, base_lr: float = 1.0) -> list[float]:
    """The LR of every iteration, as the optimizer sees it (scheduler stepped per step)."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = epoch_schedule(opt, cfg, epochs, steps)
    out = []
    for _ in range(epochs * steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_schedule_with_warmup():
    # the paper's step schedule after a linear warm-up, written out by hand:
    # lr(it) = w(it) * 0.1^(#milestones passed), w rising 0.2 -> 1 over 5 iterations
    lrs = _lrs(ScheduleConfig(name="step", milestones=[2, 4], gamma=0.1, warmup_epochs=0.5,
                              warmup_factor=0.2), 6, 10)
    assert lrs[0] == pytest.approx(0.2) and lrs[2] == pytest.approx(0.2 + 0.8 * 2 / 5)
    assert [lrs[s] for s in (5, 19, 20, 39, 40, 59)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_schedule_ends_at_min_lr():
    lrs = _lrs(ScheduleConfig(name="cosine", min_lr=0.01), 4, 25, base_lr=0.1)
    oracle = [0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * s / 100)) for s in range(100)]
    assert lrs == pytest.approx(oracle, rel=1e-9, abs=1e-12)


def test_cosine_after_warmup_follows_the_closed_form():
    lrs = _lrs(ScheduleConfig(name="cosine", warmup_epochs=1, warmup_factor=0.1), 3, 4)
    warm = [0.1 + 0.9 * s / 4 for s in range(4)]
    cos = [0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(8)]
    assert lrs == pytest.approx(warm + cos, rel=1e-9)


# ----------------------------------------------------------------- exact resume
def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_is_bitwise_exact(tmp_path):
    """N steps, stop, resume, M more == N + M uninterrupted (CPU, sampling active)."""
    cfg_full = tiny_config(tmp_path / "full")
    conv = next(m for m in a2d2c.create_model(cfg_full.model.name, num_classes=10,
                                              **cfg_full.model.kwargs).modules()
                if isinstance(m, a2d2c.A2D2Conv2d))
    # 8x8 inputs keep 64 output positions in the first stage: M = 8 samples among them
    assert conv.num_points == 8 and conv.sampling == "random"
    full = fit(cfg_full)
    assert full.status == "completed" and full.global_step == 8

    cfg_a = tiny_config(tmp_path / "split")
    stop = StopRequest()
    part = fit(cfg_a, stop=stop, on_step=lambda g: g == 3 and stop.request())
    assert part.status == "interrupted" and part.global_step == 3
    ckpt = load_checkpoint(tmp_path / "split" / "last.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (0, 3)
    resumed = fit(cfg_a, resume=tmp_path / "split" / "last.pt")
    assert resumed.status == "completed" and resumed.global_step == 8

    a, b = _params(full.model), _params(resumed.model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the stored training state matches too
    ca, cb = (load_checkpoint(tmp_path / d / "last.pt") for d in ("full", "split"))
    assert ca["temperature"] == cb["temperature"] and torch.equal(ca["rng"]["torch"],
                                                                   cb["rng"]["torch"])
    mom = [s["momentum_buffer"] for s in ca["optimizer"]["state"].values()]
    mom_b = [s["momentum_buffer"] for s in cb["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(mom, mom_b, strict=True))
    assert ca["metrics"]["val_top1"] == cb["metrics"]["val_top1"]
    # an interrupted run continues from a different state than a fresh one would
    fresh = fit(tiny_config(tmp_path / "fresh", train={"epochs": 1}))
    assert not torch.equal(_params(fresh.model)["fc.weight"], a["fc.weight"])

    # evaluation from the checkpoint reproduces the recorded accuracy exactly
    m = evaluate_checkpoint(tmp_path / "full" / "best.pt",
                            {"train": {"progress": False}})
    assert m["top1"] == m["recorded_top1"] and m["samples"] == 16
    st = evaluate_checkpoint(tmp_path / "full" / "model.safetensors")
    assert st["top1"] == m["recorded_top1"]


def test_checkpoint_holds_only_safe_types(tmp_path):
    run = fit(tiny_config(tmp_path / "r", train={"epochs": 1}))
    state = torch.load(run.output_dir / "last.pt", weights_only=True)  # no pickled code
    assert state["model_name"] == "resnet18_a2d2c" and state["epoch"] == 1
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert state["config"]["model"]["kwargs"]["width_mult"] == 0.125
    saved = yaml.safe_load((run.output_dir / "config.yaml").read_text())
    assert saved == state["config"]
    lines = (run.output_dir / "metrics.jsonl").read_text().splitlines()
    csv_lines = (run.output_dir / "metrics.csv").read_text().splitlines()
    assert len(lines) == 1 and len(csv_lines) == 2 and csv_lines[0].startswith("epoch,")


# ------------------------------------------------------------------ checkpoints
def test_corrupt_checkpoint_is_a_clear_error_and_previous_kept(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"format": "a2d2c-checkpoint", "step": 1}, path)
    save_checkpoint({"format": "a2d2c-checkpoint", "step": 2}, path)
    assert load_checkpoint(tmp_path / "last.prev.pt")["step"] == 1
    # a write that dies half-way leaves the last good file in place, and no debris
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": "a2d2c-checkpoint", "step": 3}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]
    # truncation (e.g. a copy cut short) is reported with the intact previous one
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt.*last\.prev\.pt"):
        load_checkpoint(path)
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    assert load_checkpoint(tmp_path / "last.prev.pt")["step"] == 1
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_checkpoint_from_another_architecture(tmp_path):
    run = fit(tiny_config(tmp_path / "r", train={"epochs": 1}))
    other = tiny_config(tmp_path / "o", train={"epochs": 1},
                        model={"name": "resnet18_a2d2c_plus"})
    with pytest.raises(CheckpointError, match="checkpoint is for model 'resnet18_a2d2c'"):
        fit(other, resume=run.output_dir / "last.pt")
    wider = tiny_config(tmp_path / "w", train={"epochs": 1})
    wider.model.kwargs["width_mult"] = 0.25
    with pytest.raises(CheckpointError, match=r"does not fit this model.*other shapes"):
        fit(wider, resume=run.output_dir / "last.pt")


# ----------------------------------------------------------------- reliability
def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    class Exploding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x.flatten(1)[:, :4] * self.w * float("nan")

    data = torch.utils.data.TensorDataset(torch.randn(8, 1, 2, 2), torch.zeros(8).long())
    model = Exploding()
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss \(nan\) at "
                                                 r"epoch 1, step 1"):
        train_one_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.1),
                        device=torch.device("cpu"))
    assert model.w.item() == 1.0  # stopped before the update
    # through fit: a diverging learning rate; no checkpoint of the broken state
    cfg = tiny_config(tmp_path / "nan", optim={"lr": 1e30, "momentum": 0.0},
                      train={"epochs": 1})
    with pytest.raises(NonFiniteLossError):
        fit(cfg)
    assert not (tmp_path / "nan" / "last.pt").exists()


def _write_yaml(path: Path, cfg) -> Path:
    from a2d2c.engine import config_to_dict

    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    return path


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(out, data={"train_samples": 400, "batch_size": 8},
                      train={"epochs": 3})
    recipe = _write_yaml(tmp_path / "run.yaml", cfg)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "a2d2c", "train", "--config", str(recipe)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        deadline = time.time() + 60
        line = ""
        while time.time() < deadline:  # wait until training has started
            line = proc.stdout.readline()
            if line.startswith("model "):
                break
        assert line.startswith("model "), proc.stderr.read()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert "stopped by signal 15" in stdout and "--resume" in stdout
    ckpt = load_checkpoint(out / "last.pt")
    done = ckpt["epoch"] * 50 + ckpt["step_in_epoch"]
    assert 0 < done < 150 and ckpt["global_step"] == done
    # nothing lost: the run continues from there to the end
    res = subprocess.run([sys.executable, "-m", "a2d2c", "train", "--resume",
                          str(out / "last.pt"), "--train.epochs", str(ckpt["epoch"] + 1)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "final:" in res.stdout
    assert load_checkpoint(out / "last.pt")["global_step"] == (ckpt["epoch"] + 1) * 50


def test_cli_eval_reports_the_recorded_accuracy(tmp_path, capsys):
    run = fit(tiny_config(tmp_path / "r", train={"epochs": 1}))
    recorded = run.final_metrics["val_top1"]
    assert cli_main(["eval", "--checkpoint", str(run.output_dir / "best.pt"),
                     "--train.progress", "false"]) == 0
    out = capsys.readouterr().out
    assert f"top-1 {recorded:.2f}%" in out and "recorded at training time" in out
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_bf16_autocast_step_on_cpu(tmp_path):
    run = fit(tiny_config(tmp_path / "bf16", train={"epochs": 1, "amp": "bf16",
                                                    "channels_last": True}))
    assert math.isfinite(run.final_metrics["train_loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_cuda_training_with_amp(tmp_path, amp):
    run = fit(tiny_config(tmp_path / amp, train={"epochs": 1, "device": "cuda", "amp": amp,
                                                 "channels_last": True}))
    assert math.isfinite(run.final_metrics["train_loss"])
    assert next(run.model.parameters()).is_cuda


def test_gradient_clipping_bounds_the_update():
    lin = torch.nn.Linear(4, 3, bias=False)
    torch.nn.init.zeros_(lin.weight)
    data = torch.utils.data.TensorDataset(100 * torch.randn(8, 4), torch.zeros(8).long())
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    train_one_epoch(lin, loader, torch.optim.SGD(lin.parameters(), lr=0.5),
                    device=torch.device("cpu"), clip_grad_norm=0.1)
    # plain SGD: the step is lr x the clipped gradient, whose norm is the clip value
    assert lin.weight.norm().item() == pytest.approx(0.5 * 0.1, rel=1e-5)


def test_cli_missing_data_and_checkpoint_are_clear_errors(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    assert cli_main(["train", "--data.name", "cifar100", "--data.root", missing,
                     "--train.output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "CIFAR-100 not found" in err and "nowhere/cifar-100-python" in err
    assert not (tmp_path / "out").exists()  # nothing built, nothing written
    assert cli_main(["train", "--resume", str(tmp_path / "gone.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_top_k_never_counts_a_non_finite_row():
    from a2d2c.engine.trainer import _topk_correct

    logits = torch.tensor([[0.1, 2.0, 0.3], [float("nan")] * 3, [1.0, float("inf"), 0.0],
                           [3.0, 1.0, 2.0]])
    target = torch.tensor([1, 0, 1, 2])
    top1, top2 = _topk_correct(logits, target, (1, 2))
    assert (int(top1), int(top2)) == (1, 2)  # row 0 (top-1), row 3 (top-2); NaN/inf rows never
