"""Expose the a2d2c registry through ``timm.create_model``.

Every a2d2c model is registered with timm's registry — at once if timm is already
imported, otherwise by an import hook right after ``import timm`` (importing timm takes
seconds, and most uses of a2d2c never need it) — so after ``import a2d2c``::

    timm.create_model("resnet18_a2d2c", num_classes=10, stem="cifar")
    timm.create_model("resnet50_odconv", features_only=True, out_indices=(1, 2, 3, 4))

Names that timm already owns (``resnet18``, ``resnet50``, ``mobilenetv2_050`` ...) are
*not* overwritten — that would silently change ``timm.create_model("resnet18")`` for
everyone in the process; those a2d2c models are available in timm as
``a2d2c_<name>`` (:func:`timm_name`). ``pretrained=True`` is an error: there are no
a2d2c weights to download (load torchvision weights with ``load_state_dict``).
``features_only=True`` wraps the model in timm's ``FeatureListNet`` using the model's
``feature_info``.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Sequence
from typing import Any

from torch import nn

__all__ = ["TIMM_PREFIX", "register_with_timm", "timm_name"]

TIMM_PREFIX = "a2d2c_"
_TIMM_NAMES: dict[str, str] = {}
_HAS_TIMM = importlib.util.find_spec("timm") is not None


def timm_name(name: str) -> str:
    """The name under which the a2d2c model ``name`` is registered in timm."""
    if name not in _TIMM_NAMES and name in _PENDING:
        import timm  # noqa: F401  (the import hook registers the pending names)
    if name not in _TIMM_NAMES:
        raise ValueError(f"{name!r} is not registered with timm (is timm installed?)")
    return _TIMM_NAMES[name]


def _make_entrypoint(name: str, timm_model_name: str):
    def entrypoint(
        pretrained: bool = False,
        pretrained_cfg: Any = None,
        pretrained_cfg_overlay: Any = None,
        cache_dir: Any = None,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> nn.Module:
        from ._registry import create_model

        if pretrained:
            raise ValueError(
                f"{timm_model_name!r}: a2d2c provides no pretrained weights; build with "
                "pretrained=False and load a state_dict (static ResNets take torchvision's)"
            )
        kwargs.pop("pretrained_model_args", None)
        model = create_model(name, **kwargs)
        if features_only:
            from timm.models._features import FeatureListNet

            info = getattr(model, "feature_info", None)
            if not info:
                raise ValueError(f"{name!r} does not support features_only (no feature_info)")
            if out_indices is None:
                out_indices = tuple(range(len(info)))
            flatten = bool(getattr(model, "feature_flatten_sequential", False))
            model = FeatureListNet(model, out_indices=tuple(out_indices),
                                   flatten_sequential=flatten)
        elif out_indices is not None:
            raise ValueError("out_indices is only meaningful with features_only=True")
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = timm_model_name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"a2d2c model {name!r} (see a2d2c.create_model)."
    return entrypoint


def _register_now(name: str) -> None:
    from timm.models import is_model
    from timm.models import register_model as timm_register

    target = TIMM_PREFIX + name if is_model(name) else name
    timm_register(_make_entrypoint(name, target))
    _TIMM_NAMES[name] = target


_PENDING: list[str] = []


def _register_pending() -> None:
    while _PENDING:
        _register_now(_PENDING.pop(0))


class _TimmImportHook(importlib.abc.MetaPathFinder):
    """Registers the pending a2d2c models right after ``import timm`` has finished.

    Importing timm costs seconds, so ``import a2d2c`` does not import it; every way of
    reaching ``timm.create_model`` imports the ``timm`` package first, which runs this.
    """

    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps find_spec below from recursing
        spec = importlib.util.find_spec("timm")
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:  # type: ignore[no-untyped-def]
        self.loader.exec_module(module)
        _register_pending()


_HOOK: _TimmImportHook | None = None


def register_with_timm(name: str) -> None:
    """Register the a2d2c model ``name`` with timm (no-op when timm is not installed).

    If timm is already imported this happens now, otherwise right after timm's import.
    """
    global _HOOK
    if not _HAS_TIMM:
        return
    timm = sys.modules.get("timm")
    if timm is not None and hasattr(timm, "create_model"):
        _register_pending()
        _register_now(name)
        return
    _PENDING.append(name)
    if _HOOK is None:
        _HOOK = _TimmImportHook()
        sys.meta_path.insert(0, _HOOK)
