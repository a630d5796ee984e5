"""The package runs from any folder: shipped recipes and studies, found by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import a2d2c
from a2d2c.cli import main
from a2d2c.engine import ConfigError, load_config
from a2d2c.resources import (
    ConfigNotFoundError,
    configs_root,
    list_configs,
    list_study_files,
    resolve_config,
)

PKG = Path(a2d2c.__file__).resolve().parent


def test_configs_live_inside_the_package():
    root = configs_root().resolve()
    assert root == PKG / "configs"
    assert (root / "fashion_mnist_default.yaml").is_file()
    # every shipped recipe is listed, and none of the listed names is a study definition
    on_disk = {p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml")}
    listed = set(list_configs())
    studies = {f"studies/{n}" for n in list_study_files()}
    assert studies and not (listed & studies)
    assert listed == {n for n in on_disk - studies if not n.startswith("_base_/")}


@pytest.mark.parametrize("name", ["fashion_mnist_default", "fashion_mnist_default.yaml",
                                  "cifar100/table1_resnet18_a2d2c",
                                  "table1_resnet18_a2d2c", "maskrcnn_shapes_tiny"])
def test_recipe_names_resolve_from_any_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = resolve_config(name)
    assert path.is_file() and path.resolve().is_relative_to(PKG / "configs")
    assert path.stem == Path(name).name.removesuffix(".yaml")


def test_a_file_path_still_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fashion_mnist_default.yaml").write_text(
        yaml.safe_dump({"model": {"name": "resnet18"}, "train": {"epochs": 1}}))
    cfg = load_config("fashion_mnist_default.yaml")
    assert cfg.model.name == "resnet18" and cfg.train.epochs == 1
    # by name (no suffix, not a file here) it is the shipped recipe
    assert load_config("fashion_mnist_default").model.name == "resnet18_a2d2c"


def test_unknown_and_ambiguous_names_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"did you mean table1_resnet18_a2d2c.*a2d2c configs"):
        load_config("table1_resnet18_a2d2")
    with pytest.raises(ConfigNotFoundError, match="neither a file nor a shipped recipe"):
        resolve_config("nothing_like_this")
    # a study definition is not a training recipe
    with pytest.raises(ConfigNotFoundError):
        resolve_config("studies/main")


def test_study_list_works_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["study", "--list"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert names == list_study_files() and "main" in names


def test_empty_study_listing_is_an_error(tmp_path, monkeypatch, capsys):
    import a2d2c.resources as res

    monkeypatch.setattr(res, "studies_root", lambda: tmp_path / "none")
    assert main(["study", "--list"]) == 2
    assert "no study files found" in capsys.readouterr().err
