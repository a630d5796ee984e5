"""The recipes and study files shipped inside the package (``a2d2c/configs/``).

Everything that names a recipe — ``a2d2c train --config``, ``a2d2c detect``,
``a2d2c study`` and :func:`a2d2c.engine.load_config` — resolves it here, so a wheel
installed anywhere finds its own files::

    resolve_config("fashion_mnist_default")            # a shipped recipe by name
    resolve_config("cifar100/table1_resnet18_a2d2c")   # by its relative name
    resolve_config("my_recipe.yaml")                   # a file on disk still works
    list_configs("table1_*")                           # names, without ``.yaml``
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
import fnmatch
import importlib.resources
import os
from pathlib import Path

__all__ = [
    "ConfigNotFoundError",
    "configs_root",
    "list_configs",
    "list_study_files",
    "resolve_config",
    "studies_root",
]

#: study definitions live here (relative to the configs root); their training recipes in
#: ``studies/recipes/`` are ordinary recipes
STUDIES = "studies"

_ROOT: Path | None = None


class ConfigNotFoundError(FileNotFoundError, ValueError):
    """No file and no shipped recipe by that name."""


def configs_root() -> Path:
    """The folder of the shipped recipes, as a real path (extracted once if zipped)."""
    global _ROOT
    if _ROOT is None:
        res = importlib.resources.files("a2d2c") / "configs"
        if isinstance(res, Path):
            _ROOT = res
        else:  # a zipped install: importlib extracts it for the life of the process
            stack = contextlib.ExitStack()
            atexit.register(stack.close)
            _ROOT = Path(stack.enter_context(importlib.resources.as_file(res)))
    return _ROOT


def studies_root() -> Path:
    """The folder of the shipped study files (``<configs>/studies``)."""
    return configs_root() / STUDIES


def _is_study_file(rel: Path) -> bool:
    return len(rel.parts) == 2 and rel.parts[0] == STUDIES


def _recipe_names() -> list[str]:
    root = configs_root()
    names = []
    for p in sorted(root.rglob("*.yaml")):
        rel = p.relative_to(root)
        # study definitions are not recipes; _base_/ holds fragments that recipes include
        if not _is_study_file(rel) and not rel.parts[0].startswith("_"):
            names.append(rel.with_suffix("").as_posix())
    return names


def list_configs(pattern: str | None = None) -> list[str]:
    """Names of the shipped training/detection recipes (``cifar100/table1_...``), sorted.

    ``pattern`` is a shell-style glob matched against the name and against its last part
    (``table1_*``, ``*a2d2c_plus*``, ``detection/*``); a plain word matches as a substring.
    """
    names = _recipe_names()
    if not pattern:
        return names
    pat = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    return [n for n in names if fnmatch.fnmatch(n, pat) or fnmatch.fnmatch(n.rsplit("/", 1)[-1],
                                                                         pat)]


def list_study_files() -> list[str]:
    """Names of the shipped studies (``main``, ``placement``, ...)."""
    d = studies_root()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def resolve_config(name: str | os.PathLike) -> Path:
    """A recipe file: ``name`` if it is a file, else the shipped recipe of that name.

    The name may carry ``.yaml`` or not, and be relative (``detection/maskrcnn_shapes_tiny``)
    or bare when unique (``maskrcnn_shapes_tiny``). Raises :class:`ConfigNotFoundError`.
    """
    path = Path(name)
    if path.is_file():
        return path
    text = str(name)
    stem = text[:-5] if text.endswith(".yaml") else text
    root = configs_root()
    cand = root / f"{stem}.yaml"
    if cand.is_file() and not _is_study_file(cand.relative_to(root)):
        return cand
    names = _recipe_names()
    by_stem = [n for n in names if n.rsplit("/", 1)[-1] == stem]
    if len(by_stem) == 1:
        return root / f"{by_stem[0]}.yaml"
    if len(by_stem) > 1:
        raise ConfigNotFoundError(f"recipe name {text!r} is ambiguous: {', '.join(by_stem)}; "
                                  f"give the relative name")
    close = difflib.get_close_matches(stem, names + [n.rsplit("/", 1)[-1] for n in names], n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ConfigNotFoundError(f"config {text!r} is neither a file nor a shipped recipe{hint} "
                              f"(list them with: a2d2c configs)")
