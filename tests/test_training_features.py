"""Recipe features of the engine: EMA, MixUp/CutMix, auto-augmentation, random erasing,
gradient accumulation, weight-decay groups, and all of them on in one resumable run.

Independent facts: a hand-computed two-step average; the mixing coefficient recovered
from the mixed images themselves; one big batch against accumulated small ones;
parameter kinds enumerated by their names.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

import a2d2c
from _engine_helpers import tiny_config
from a2d2c.cli import main as cli_main
from a2d2c.data import build_dataset, sample_seed
from a2d2c.data.augment import BatchMix
from a2d2c.engine import ConfigError, DataConfig, StopRequest, fit, load_checkpoint
from a2d2c.engine.config import load_config
from a2d2c.engine.ema import ModelEma
from a2d2c.engine.param_groups import param_groups
from a2d2c.engine.trainer import train_one_epoch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------- EMA
def test_ema_two_steps_by_hand():
    lin = nn.Linear(2, 1)
    w = [torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 0.5]]), torch.tensor([[-1.0, 4.0]])]
    ema = ModelEma(lin, decay=0.9, warmup=True)
    with torch.no_grad():
        lin.weight.copy_(w[0])
    ema.update(lin)  # first update: a copy
    with torch.no_grad():
        lin.weight.copy_(w[1])
    ema.update(lin)  # n = 1: decay min(0.9, 2/11)
    d1 = 2 / 11
    e1 = d1 * w[0] + (1 - d1) * w[1]
    torch.testing.assert_close(ema.module.module.weight, e1)
    with torch.no_grad():
        lin.weight.copy_(w[2])
    ema.update(lin)  # n = 2: decay min(0.9, 3/12)
    torch.testing.assert_close(ema.module.module.weight, 0.25 * e1 + 0.75 * w[2])
    assert ema.num_updates == 3
    # without warm-up the decay is the configured one from the second update on
    plain = ModelEma(nn.Linear(2, 1), decay=0.9, warmup=False)
    src = nn.Linear(2, 1)
    with torch.no_grad():
        src.weight.copy_(w[0])
    plain.update(src)
    with torch.no_grad():
        src.weight.copy_(w[1])
    plain.update(src)
    torch.testing.assert_close(plain.module.module.weight, 0.9 * w[0] + 0.1 * w[1])
    # state round trip; every=2 updates on every second optimizer step
    again = ModelEma(nn.Linear(2, 1), decay=0.9)
    again.load_state_dict(ema.state_dict())
    assert torch.equal(again.module.module.weight, ema.module.module.weight)
    assert again.num_updates == 3
    sparse = ModelEma(nn.Linear(2, 1), decay=0.9, every=2)
    for _ in range(5):
        sparse.step(lin)
    assert sparse.num_updates == 2


def test_ema_averages_batchnorm_and_copies_temperature():
    m = nn.Sequential(a2d2c.DynamicConv2d(3, 4, 3, temperature=30.0), nn.BatchNorm2d(4))
    ema = ModelEma(m, decay=0.5, warmup=False)
    ema.update(m)
    with torch.no_grad():
        m[1].running_mean.fill_(2.0)
    a2d2c.set_temperature(m, 5.0)
    ema.update(m)
    avg = ema.module.module
    assert torch.allclose(avg[1].running_mean, torch.full((4,), 1.0))  # 0.5·0 + 0.5·2
    assert float(avg[0].temperature) == 5.0  # the schedule's τ, not an average


# -------------------------------------------------------------------- MixUp / CutMix
def _onehot(y: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, n).float()


def test_mixup_targets_match_the_lambda_of_the_images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8, generator=g)
    y = torch.tensor([0, 1, 2, 3, 4, 1])
    mix = BatchMix(5, mixup_alpha=0.4, seed=3)
    rng = torch.get_rng_state()
    xm, ym = mix(x, y, epoch=1, step=2)
    assert torch.equal(torch.get_rng_state(), rng)  # the global stream is untouched
    xr, yr = x.roll(1, 0), y.roll(1, 0)
    d = (x - xr).flatten()
    lam = float(((xm - xr).flatten() @ d) / (d @ d))  # x' = λx + (1-λ)x_r
    torch.testing.assert_close(xm, lam * x + (1 - lam) * xr)
    torch.testing.assert_close(ym, lam * _onehot(y, 5) + (1 - lam) * _onehot(yr, 5))
    torch.testing.assert_close(ym.sum(1), torch.ones(6))
    again = mix(x, y, epoch=1, step=2)
    assert torch.equal(again[0], xm)  # a pure function of (seed, epoch, step, rank)
    assert not torch.equal(mix(x, y, epoch=1, step=3)[0], xm)


def test_cutmix_lambda_is_the_area_kept():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 16, 16, generator=g)
    y = torch.tensor([0, 1, 2, 3])
    for step in range(6):
        xm, ym = BatchMix(4, cutmix_alpha=1.0)(x, y, epoch=0, step=step)
        xr, yr = x.roll(1, 0), y.roll(1, 0)
        own = (xm == x).all(1).float().mean((1, 2))  # fraction of pixels kept, per image
        pasted = (xm == xr).all(1).float().mean((1, 2))
        torch.testing.assert_close(own + pasted, torch.ones(4))
        lam = own[0]  # one box for the batch
        torch.testing.assert_close(own, lam.expand(4))
        torch.testing.assert_close(ym, lam * _onehot(y, 4) + (1 - lam) * _onehot(yr, 4))
        torch.testing.assert_close(ym.sum(1), torch.ones(4))


# --------------------------------------------------------------- per-sample augmentation
@pytest.mark.parametrize("options", [
    {"auto_augment": "randaugment", "rand_augment_magnitude": 15},
    {"auto_augment": "trivialaugment"},
    {"auto_augment": "autoaugment", "auto_augment_policy": "cifar10"},
    {"random_erasing": 1.0},
])
def test_augmentation_is_a_pure_function_of_seed_epoch_index(options):
    cfg = DataConfig(name="synthetic", img_size=16, train_samples=8, num_classes=4, **options)
    ds = build_dataset("synthetic", "train", cfg)
    plain = build_dataset("synthetic", "train", DataConfig(name="synthetic", img_size=16,
                                                           train_samples=8, num_classes=4))
    keys = [(i, sample_seed(5, epoch, i)) for epoch in (0, 1) for i in range(8)]
    first = [ds[k][0] for k in keys]
    torch.manual_seed(123)  # another global RNG state changes nothing
    rng = torch.get_rng_state()
    second = [ds[k][0] for k in reversed(keys)][::-1]
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    # and it does something: epochs differ, and differ from the plain transform
    assert any(not torch.equal(first[i], first[8 + i]) for i in range(8))
    assert any(not torch.equal(first[i], plain[keys[i]][0]) for i in range(16))


# ------------------------------------------------------------------- accumulation
def test_accumulating_four_batches_of_8_equals_one_batch_of_32():
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 3, 8, 8), torch.randint(0, 5, (32,)))

    def run(batch: int, accum: int) -> tuple[dict[str, torch.Tensor], int]:
        torch.manual_seed(1)  # no BatchNorm: a batch's statistics do not enter
        model = nn.Sequential(a2d2c.DynamicConv2d(3, 6, 3, padding=1), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)
        loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False)
        res = train_one_epoch(model, loader, opt, device=torch.device("cpu"),
                              accum_steps=accum, criterion=nn.CrossEntropyLoss(
                                  label_smoothing=0.1))
        return {k: v.detach().clone() for k, v in model.state_dict().items()}, res.steps

    big, steps_big = run(32, 1)
    small, steps_small = run(8, 4)
    assert steps_big == steps_small == 1
    for k in big:
        torch.testing.assert_close(small[k], big[k], rtol=1e-5, atol=1e-6)
    start = run(8, 1)[0]  # four plain steps really differ
    assert not torch.allclose(start["4.weight"], big["4.weight"], atol=1e-4)


# ----------------------------------------------------------------- weight-decay groups
def test_no_weight_decay_on_norms_biases_and_attention():
    m = a2d2c.create_model("resnet18_dynamicconv", num_classes=3, stem="cifar",
                           width_mult=0.125)
    groups = param_groups(m, 1e-4, norm_weight_decay=0.0, bias_weight_decay=0.0,
                          attention_weight_decay=0.0)
    by_id = {id(p): g for g in groups for p in g["params"]}
    names = dict(m.named_parameters())
    assert len(by_id) == len(names)  # every parameter once
    for name, p in names.items():
        g = by_id[id(p)]
        parts = name.split(".")
        if any(s.startswith("bn") for s in parts) or "downsample.1" in name:
            expected = "norm"
        elif ".fc1." in name or ".fc2." in name:
            expected = "attention"
        elif parts[-1] == "bias":
            expected = "bias"
        else:
            expected = "other"
        assert g["name"] == expected, name
        assert g["weight_decay"] == (1e-4 if expected == "other" else 0.0), name
    # attention left at the default: its weights decay, its biases follow the bias rule
    g2 = param_groups(m, 1e-4, bias_weight_decay=0.0)
    wd = {id(p): g["weight_decay"] for g in g2 for p in g["params"]}
    assert wd[id(names["layer1.0.conv1.fc1.weight"])] == 1e-4
    assert wd[id(names["layer1.0.conv1.fc1.bias"])] == 0.0
    assert wd[id(names["bn1.weight"])] == 1e-4


# ----------------------------------------------------------------------- config keys
@pytest.mark.parametrize("override, match", [
    (["--ema.decay", "1.5"], "ema.decay"),
    (["--ema.every", "0"], "ema.every"),
    (["--optim.accum_steps", "0"], "optim.accum_steps"),
    (["--optim.norm_weight_decay", "-1"], "optim.norm_weight_decay"),
    (["--data.auto_augment", "randaug"], "data.auto_augment"),
    (["--data.auto_augment_policy", "mnist"], "data.auto_augment_policy"),
    (["--data.rand_augment_magnitude", "31"], "data.rand_augment_magnitude"),
    (["--data.random_erasing", "2"], "data.random_erasing"),
    (["--data.mixup_alpha", "-0.1"], "data.mixup_alpha"),
    (["--model.kwargs.drop_path_rate", "1.0"], "drop_path_rate"),
    (["--model.pretrained", "''"], "model.pretrained"),
])
def test_recipe_feature_keys_are_validated(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, override)


def test_print_config_shows_every_feature_key(capsys):
    assert cli_main(["train", "--print-config", "--ema.decay", "0.999"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["ema"] == {"decay": 0.999, "warmup": True, "every": 1}
    for key in ("auto_augment", "auto_augment_policy", "rand_augment_ops",
                "rand_augment_magnitude", "random_erasing", "mixup_alpha", "cutmix_alpha"):
        assert key in cfg["data"], key
    for key in ("accum_steps", "norm_weight_decay", "bias_weight_decay",
                "attention_weight_decay", "label_smoothing"):
        assert key in cfg["optim"], key
    assert "pretrained" in cfg["model"]


# ------------------------------------------------------------- everything on, resumed
def _everything(tmp_path, out: str) -> list[str]:
    """CLI overrides of tiny_config's run with every recipe feature switched on."""
    weights = tmp_path / "static.pth"
    if not weights.exists():  # the static twin of the tiny model, as "pretrained" weights
        torch.manual_seed(9)
        torch.save(a2d2c.create_model("resnet18", num_classes=10, stem="cifar",
                                      width_mult=0.125).state_dict(), weights)
    cfg = tiny_config(tmp_path / out)
    flat = {
        "model.name": cfg.model.name, "model.kwargs": cfg.model.kwargs,
        "model.kwargs.drop_path_rate": 0.2, "model.pretrained": str(weights),
        **{f"data.{k}": v for k, v in vars(cfg.data).items() if v is not None},
        "data.auto_augment": "randaugment", "data.random_erasing": 0.5,
        "data.mixup_alpha": 0.4, "data.cutmix_alpha": 1.0,
        "optim.lr": 0.05, "optim.accum_steps": 2, "optim.label_smoothing": 0.1,
        "optim.norm_weight_decay": 0.0, "optim.bias_weight_decay": 0.0,
        "optim.attention_weight_decay": 0.0,
        "schedule.name": "cosine", "schedule.warmup_epochs": 0.5,
        "temperature.anneal_epochs": 1.5, "ema.decay": 0.9,
        **{f"train.{k}": v for k, v in vars(cfg.train).items()},
    }
    args = []
    for k, v in flat.items():
        args += [f"--{k}", yaml.safe_dump(v, default_flow_style=True).strip().removesuffix(
            "\n...")]
    return args


def test_train_with_every_feature_resumes_bitwise_and_eval_reports_ema(tmp_path, capsys):
    full = _everything(tmp_path, "full")
    assert cli_main(["train", *full]) == 0
    # the same run, stopped after the first optimizer step (mid-epoch), then resumed
    from a2d2c.cli.train import build_config

    class Args:
        config, resume, overrides = None, None, _everything(tmp_path, "split")

    cfg = build_config(Args)
    stop = StopRequest()
    part = fit(cfg, stop=stop, on_step=lambda g: g == 1 and stop.request())
    assert part.status == "interrupted" and part.global_step == 1
    ck = load_checkpoint(tmp_path / "split" / "last.pt")
    assert (ck["epoch"], ck["step_in_epoch"]) == (0, 1) and ck["ema"] is not None
    (tmp_path / "static.pth").unlink()  # resuming, evaluating, loading: the checkpoint's weights
    assert cli_main(["train", "--resume", str(tmp_path / "split" / "last.pt")]) == 0
    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in ("full", "split"))
    assert a["global_step"] == b["global_step"] == 4  # 2 epochs × 4 batches / accum 2
    for part_name in ("model",):
        for k, v in a[part_name].items():
            assert torch.equal(v, b[part_name][k]), k
    for k, v in a["ema"]["module"].items():
        assert torch.equal(v, b["ema"]["module"][k]), k
    assert a["metrics"]["ema_val_top1"] == b["metrics"]["ema_val_top1"]
    assert a["metrics"]["val_top1"] == b["metrics"]["val_top1"]
    capsys.readouterr()
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "full" / "last.pt"),
                     "--train.progress", "false"]) == 0
    out = capsys.readouterr().out
    assert f"top-1 {a['metrics']['val_top1']:.2f}%" in out
    assert f"EMA weights: top-1 {a['metrics']['ema_val_top1']:.2f}%" in out
    model = a2d2c.load_model(tmp_path / "full" / "last.pt")
    assert torch.equal(model.state_dict()["fc.weight"], a["model"]["fc.weight"])


def test_augmented_batches_do_not_depend_on_the_worker_processes():
    from a2d2c.data import build_loader

    cfg = DataConfig(name="synthetic", img_size=8, train_samples=16, num_classes=4,
                     batch_size=4, auto_augment="trivialaugment", random_erasing=0.5)
    ds = build_dataset("synthetic", "train", cfg)
    batches = []
    for workers in (0, 2):
        cfg.workers = workers
        loader = build_loader(ds, cfg, train=True, seed=3)
        loader.sampler.set_epoch(1)
        batches.append(torch.cat([x for x, _ in loader]))
    assert torch.equal(batches[0], batches[1])
