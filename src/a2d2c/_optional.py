"""Optional dependencies: one import helper, one message naming the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingDependencyError", "require"]

#: import name -> (pip distribution, a2d2c extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "pycocotools": ("pycocotools", "detection"),
    "timm": ("timm", "timm"),
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "safetensors": ("safetensors", "extras"),
    "matplotlib": ("matplotlib", "extras"),
    "tensorboard": ("tensorboard", "extras"),
    "tqdm": ("tqdm", "extras"),
}


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message names the extra."""


def require(module: str, what: str) -> ModuleType:
    """``importlib.import_module(module)``, or one line saying which extra installs it.

    ``what`` names the feature that needs it (``"a2d2c detect"``, ``"train.tensorboard"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != top:
            raise  # the package is there but one of *its* imports failed: not ours to mask
        dist, extra = EXTRAS.get(top, (top, "all"))
        raise MissingDependencyError(
            f"{what} needs {dist}, which is not installed: pip install \"a2d2c[{extra}]\""
        ) from None
