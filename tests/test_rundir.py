"""Own data (imagefolder), the neutral base recipe, run folders and the run lock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from _engine_helpers import tiny_config, write_image_folder
from a2d2c.cli import main
from a2d2c.data import DatasetNotFoundError, build_dataset, dataset_info
from a2d2c.engine import ConfigError, fit, load_config
from a2d2c.engine.rundir import RunDirError

SRC = Path(__file__).resolve().parents[1] / "src"


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "mydata"  # mydata/{train,val}/{cat,dog,owl}/*.JPEG
    write_image_folder(root, classes=("cat", "dog", "owl"), per_class=3, size=(20, 18))
    return root


def test_imagefolder_reads_any_class_tree(tmp_path):
    root = _folder(tmp_path)
    cfg = load_config("base", ["--data.root", str(root), "--data.img_size", "16",
                               "--data.resize", "16"]).data
    info = dataset_info(cfg)
    assert (info.num_classes, info.in_chans, info.img_size) == (3, 3, 16)
    train = build_dataset("imagefolder", "train", cfg)
    assert len(train) == 9
    # the label of an image is its class folder's place in the sorted folder names
    raw = train.base
    assert raw.classes == ["cat", "dog", "owl"]
    for i in range(len(raw)):
        img, label = raw[i]
        path = Path(raw.folder.samples[i][0])
        assert label == ["cat", "dog", "owl"].index(path.parent.name)
        assert img.size == (20, 18)


def test_imagefolder_refuses_mismatched_class_folders(tmp_path):
    root = _folder(tmp_path)
    (root / "val" / "owl").rename(root / "val" / "emu")
    cfg = load_config("base", ["--data.root", str(root)]).data
    with pytest.raises(DatasetNotFoundError, match=r"only in train: \['owl'\].*\['emu'\]"):
        dataset_info(cfg)


def test_train_on_own_images_inherits_nothing_from_fashion_mnist(tmp_path, monkeypatch, capsys):
    root = _folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["train", "--model.name", "resnet18", "--data.name", "imagefolder",
            "--data.root", str(root), "--model.kwargs.width_mult", "0.125",
            "--data.img_size", "16", "--data.resize", "16", "--data.batch_size", "3",
            "--data.workers", "0", "--train.epochs", "1", "--train.device", "cpu",
            "--train.progress", "false", "--schedule.warmup_epochs", "0"]
    assert main([*args, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["train_samples"] is None and printed["train"]["threads"] == 0
    assert printed["model"]["kwargs"] == {"width_mult": 0.125}
    assert printed["train"]["output_dir"] is None
    assert main(args) == 0
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("imagefolder-resnet18-")
    saved = yaml.safe_load((runs[0] / "config.yaml").read_text())
    assert saved["train"]["output_dir"] == str(Path("runs") / runs[0].name)
    assert (runs[0] / "last.pt").is_file()


def test_default_run_folders_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tmp_path, train={"output_dir": None, "epochs": 1})
    a, b = fit(cfg), fit(cfg)
    assert a.output_dir != b.output_dir
    assert a.output_dir.parent == b.output_dir.parent == Path("runs")
    for r in (a, b):
        assert (r.output_dir / "last.pt").is_file()
        assert len((r.output_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert cfg.train.output_dir is None  # the caller's config is not changed


def test_a_fresh_run_does_not_replace_an_earlier_one(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(out, train={"epochs": 1})
    fit(cfg)
    before = (out / "last.pt").read_bytes()
    with pytest.raises(RunDirError, match=r"already holds a run.*--resume.*--train.overwrite"):
        fit(cfg)
    assert (out / "last.pt").read_bytes() == before
    assert isinstance(RunDirError("x"), ConfigError)  # the CLI reports it as one line, exit 2
    cfg.train.overwrite = True
    fit(cfg)  # asked for explicitly


def test_two_runs_cannot_write_one_folder(tmp_path, capsys):
    out = tmp_path / "shared"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    common = ["--model.name", "resnet18", "--model.kwargs.width_mult", "0.125",
              "--data.name", "synthetic", "--data.img_size", "8", "--data.batch_size", "8",
              "--train.device", "cpu", "--train.threads", "1", "--train.progress", "false",
              "--train.output_dir", str(out), "--schedule.warmup_epochs", "0"]
    # the first run is long (many epochs of synthetic data); the second starts while it runs
    first = subprocess.Popen([sys.executable, "-m", "a2d2c", "train", *common,
                              "--data.train_samples", "4096", "--train.epochs", "50"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.yaml").is_file():
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.2)
        # the second run (here, in this process) is refused, even asking to overwrite
        rc = main(["train", *common, "--data.train_samples", "16", "--train.epochs", "1",
                   "--train.overwrite", "true"])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert f"another run (pid {first.pid} " in err and str(out) in err
        assert first.poll() is None  # the first run goes on undisturbed
    finally:
        first.kill()
        first.wait()
