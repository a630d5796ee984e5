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


# ------------------------------------------------------------------ configs / models
def test_configs_command_lists_filters_and_shows(capsys):
    assert main(["configs", "table1_*"]) == 0
    out = capsys.readouterr().out.split()
    assert out and all(n.rsplit("/", 1)[-1].startswith("table1_") for n in out)
    assert "cifar100/table1_resnet18_a2d2c" in out
    assert main(["configs", "--show", "fashion_mnist_default"]) == 0
    shown = capsys.readouterr().out
    assert yaml.safe_load(shown)["model"]["name"] == "resnet18_a2d2c"


def test_models_command_lists_the_registry(capsys):
    assert main(["models", "odconv"]) == 0
    out = capsys.readouterr().out.split()
    assert out == [n for n in a2d2c.list_models() if "odconv" in n] and out
    assert main(["models"]) == 0
    assert capsys.readouterr().out.split() == a2d2c.list_models()


@pytest.mark.parametrize("cmd", [["configs", "no_such_recipe"], ["models", "no_such_model"]])
def test_empty_listings_are_errors(cmd, capsys):
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"a2d2c {cmd[0]}: error:") and cmd[1] in err


def test_unknown_detection_recipe_is_one_line(capsys):
    assert main(["detect", "train", "--config", "no_such_recipe"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a2d2c configs" in err


# ------------------------------------------------------------ optional dependencies
def test_missing_optional_dependency_names_the_extra(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "pycocotools", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    assert main(["detect", "make-shapes", "--out", str(tmp_path / "s"), "--num-train", "1",
                 "--num-val", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert 'pip install "a2d2c[detection]"' in err and "pycocotools" in err


def test_require_does_not_mask_a_broken_dependency(monkeypatch):
    from a2d2c._optional import MissingDependencyError, require

    with pytest.raises(MissingDependencyError, match=r'a2d2c\[timm\]'):
        monkeypatch.setitem(__import__("sys").modules, "timm", None)
        require("timm", "x")
    assert require("yaml", "x") is yaml


# ------------------------------------------------------------------ license / version
def test_license_and_single_version():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    assert "Apache License" in (root / "LICENSE").read_text()[:200]
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "a2d2c.__version__"}
    assert a2d2c.__version__.count(".") == 2


# ------------------------------------------------------------------------ layout
def test_data_does_not_import_the_engine():
    import subprocess
    import sys

    code = ("import sys, a2d2c.data; "
            "print(sorted(m for m in sys.modules if m.startswith('a2d2c.engine')))")
    src = Path(__file__).resolve().parents[1] / "src"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(src), "PATH": ""}).stdout
    assert out.strip() == "[]"


def test_paper_tables_live_in_a2d2c_paper():
    from a2d2c.paper import figures, table

    assert figures.PAPER_ROWS and callable(table.paper_rows)
    assert not (PKG / "paper_table.py").exists() and not (PKG / "paper_figures.py").exists()
