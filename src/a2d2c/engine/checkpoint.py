"""Checkpoints: atomic writes, safe loads, RNG states, released weights.

A checkpoint is a dict of tensors and primitive containers only, so it loads with
``torch.load(weights_only=True)`` (no pickled code runs on load)::

    {"format": "a2d2c-checkpoint", "version": 1,
     "model_name": str, "model": state_dict (unwrapped: no "module." / "_orig_mod."),
     "optimizer", "lr_scheduler", "temperature", "scaler": state dicts,
     "epoch": int, "step_in_epoch": int, "global_step": int,
     "rng": {"python", "numpy", "torch", "cuda"}, "config": resolved config dict,
     "metrics": dict, "best_top1": float}

``epoch``/``step_in_epoch`` say where training continues: ``(e, 0)`` after epoch ``e-1``
finished, ``(e, s)`` when interrupted after ``s`` steps of epoch ``e``.

Writes go to a temporary file in the same folder, are flushed to disk and then
renamed over the target (``os.replace``), so a crash mid-write never leaves a
truncated ``last.pt``. The previous ``last.pt`` is kept as ``last.prev.pt``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "WRAPPER_PREFIXES",
    "CheckpointError",
    "StateMismatch",
    "capture_rng_state",
    "compare_state",
    "load_checkpoint",
    "read_torch_file",
    "read_weights",
    "remove_stale_temp_files",
    "restore_rng_state",
    "save_checkpoint",
    "save_safetensors",
    "strip_prefixes",
    "unwrap_model",
]

FORMAT = "a2d2c-checkpoint"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or that does not fit the model."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP and ``torch.compile`` wrappers (what gets saved)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (CPU) and CUDA RNG states, as tensors and primitives."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # one state per process in DDP: restore the current device's
            torch.cuda.set_rng_state(cuda[0])


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: keep the file
    return True


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.NAME.tmpPID`` files that a killed writer left in ``folder``.

    Only files whose writer process ``PID`` is dead on this machine are removed (a live
    writer's file is never touched). Returns the removed paths.
    """
    removed = []
    for tmp in Path(folder).glob(".*.tmp*"):
        pid = tmp.name.rpartition(".tmp")[2]
        if pid.isdigit() and tmp.is_file() and not _pid_alive(int(pid)):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass  # gone already, or not ours to delete
    return removed


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike, *,
                    keep_previous: bool = True) -> Path:
    """Write ``state`` to ``path`` atomically; the old file (if any) becomes ``*.prev.pt``.

    Temporary files left by a killed earlier writer are removed first
    (:func:`remove_stale_temp_files`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path.parent)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            prev = path.with_name(path.stem + ".prev" + path.suffix)
            prev_tmp = prev.with_name(f".{prev.name}.tmp{os.getpid()}")
            try:
                os.link(path, prev_tmp)
            except OSError:  # file systems without hard links
                shutil.copy2(path, prev_tmp)
            os.replace(prev_tmp, prev)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno is None or e.filename is not None:
            raise
        # e.g. ENOSPC from the write: say which file, and that the old one is untouched
        raise OSError(e.errno, f"{e.strerror} (writing the checkpoint; the previous one is "
                      "intact)", str(path)) from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


#: What each kind of reader needs from a checkpoint, and of which type (a crafted or
#: foreign file missing one fails here with one clear error, never a ``KeyError`` later).
CHECKPOINT_KEYS: dict[str, type | tuple[type, ...]] = {
    "model": dict, "config": dict, "optimizer": dict, "lr_scheduler": dict,
    "temperature": dict, "epoch": int, "step_in_epoch": int, "global_step": int,
    "rng": (dict, list),  # a list: one state per rank
}
WEIGHTS_KEYS = ("model", "config")  # eval, visualize, a released best.pt
RESUME_KEYS = tuple(CHECKPOINT_KEYS)  # train --resume


def _first_line(e: BaseException) -> str:
    """``TypeName: first line`` of an exception, also when its message is empty."""
    lines = str(e).strip().splitlines()
    return type(e).__name__ + (f": {lines[0][:200]}" if lines else "")


def read_torch_file(path: str | os.PathLike, map_location: Any = "cpu", hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)``; any failure is one :class:`CheckpointError`.

    The one reader of ``.pt``/``.pth`` files: an empty file, a truncated one or random
    bytes give "corrupt checkpoint PATH: ..." (plus ``hint``), never the parser's own
    ``EOFError``/``UnpicklingError``/``BadZipFile``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file" if path.is_dir()
                              else f"checkpoint not found: {path}")
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"corrupt checkpoint {path}: the file is empty (0 bytes){hint}")
        return torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:
        # An untrusted file: whatever the parser raises (EOFError with an empty message,
        # UnpicklingError, BadZipFile, RuntimeError, UnicodeDecodeError, ...) means corrupt.
        raise CheckpointError(f"corrupt checkpoint {path}: the file is truncated or corrupt "
                              f"and cannot be read ({_first_line(e)}){hint}") from None


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", *,
                    require: Sequence[str] = ()) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises :class:`CheckpointError` with the path and the cause when the file is missing,
    empty, truncated, corrupt, not an a2d2c checkpoint, or lacks one of the entries in
    ``require`` (e.g. :data:`WEIGHTS_KEYS`, :data:`RESUME_KEYS`; types in
    :data:`CHECKPOINT_KEYS`); when ``last.prev.pt`` exists beside a
    bad ``last.pt`` the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file" if path.is_dir()
                              else f"checkpoint not found: {path}")
    prev = path.with_name(path.stem + ".prev" + path.suffix)
    hint = f"; the previous checkpoint is {prev}, resume from it" if prev.is_file() else ""
    state = read_torch_file(path, map_location, hint)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an a2d2c training checkpoint (no "
                              f"'format': {FORMAT!r} entry){hint}")
    for key in require:
        kind = CHECKPOINT_KEYS.get(key, object)
        if key not in state:
            raise CheckpointError(f"corrupt checkpoint {path}: it has no {key!r} entry{hint}")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise CheckpointError(f"corrupt checkpoint {path}: its {key!r} entry is a "
                                  f"{type(state[key]).__name__}, not a "
                                  f"{getattr(kind, '__name__', kind)}{hint}")
    if "model" in require and not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                      for k, v in state["model"].items()):
        raise CheckpointError(f"corrupt checkpoint {path}: its 'model' entry is not a "
                              f"state_dict of named tensors{hint}")
    return state


def load_model_state(model: nn.Module, state: dict[str, Any], *, source: str = "checkpoint",
                     expected_name: str | None = None) -> None:
    """Load ``state["model"]`` into ``model`` strictly, with a clear architecture error."""
    name = state.get("model_name")
    if expected_name is not None and name is not None and name != expected_name:
        raise CheckpointError(f"{source} holds weights of model {name!r}, but the config builds "
                              f"{expected_name!r}; use a matching model.name")
    theirs = strip_prefixes(state["model"])
    diff = compare_state(model, theirs)
    if not diff.ok:
        raise CheckpointError(f"{source} (model {name!r}) does not fit this model: "
                              f"{diff.describe()} — it was written for another architecture "
                              "or other model options")
    unwrap_model(model).load_state_dict(theirs)


def save_safetensors(model: nn.Module | dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, Any] | None = None) -> Path | None:
    """Release the weights as ``.safetensors`` (metadata as JSON strings).

    Returns ``None`` (and writes nothing) when the ``safetensors`` package is missing.
    """
    try:
        from safetensors.torch import save_file
    except ImportError:
        return None
    path = Path(path)
    sd = unwrap_model(model).state_dict() if isinstance(model, nn.Module) else model
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------- weights: read, clean, compare
#: wrapper prefixes: DistributedDataParallel (``module.``) and torch.compile (``_orig_mod.``)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with every leading ``module.`` / ``_orig_mod.`` removed from its keys."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, metadata)`` of any weights file, prefixes cleaned.

    Reads this package's training checkpoints (``last.pt``/``best.pt``: the weights are
    the ``"model"`` entry, the metadata the other entries), released ``.safetensors``
    (metadata: their JSON header entries, decoded), detection checkpoints, and plain
    ``torch.save(model.state_dict())`` files or dicts with a ``"state_dict"`` entry.
    Never unpickles code (``weights_only=True``). Raises :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    meta: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        from .._optional import require

        st = require("safetensors.torch", "reading .safetensors")
        safe_open = require("safetensors", "reading .safetensors").safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                raw_meta = dict(f.metadata() or {})
            obj: Any = st.load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is truncated or corrupt: {e}") from None
        for k, v in raw_meta.items():
            try:
                meta[k] = json.loads(v)
            except ValueError:
                meta[k] = v
    else:
        obj = read_torch_file(path, "cpu")  # empty/corrupt/pickled code: CheckpointError
        if isinstance(obj, Mapping):
            for key in ("model", "state_dict"):
                if isinstance(obj.get(key), Mapping):
                    meta = {k: v for k, v in obj.items() if k != key}
                    obj = obj[key]
                    break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor)
                                               for v in obj.values()):
        raise CheckpointError(f"{path} holds neither a state_dict nor a dict with a 'model' "
                              "state_dict")
    return strip_prefixes(obj), meta


@dataclass
class StateMismatch:
    """How a state_dict differs from a model's: names only one side has, other shapes."""

    missing: list[str] = field(default_factory=list)      # in the model, not the weights
    unexpected: list[str] = field(default_factory=list)   # in the weights, not the model
    #: (name, shape in the weights, shape in the model)
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shapes)

    def describe(self, n: int = 4) -> str:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")

        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing ({show(self.missing)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected ({show(self.unexpected)})")
        if self.shapes:
            k, theirs, own = self.shapes[0]
            parts.append(f"{len(self.shapes)} with other shapes (e.g. {k}: checkpoint "
                         f"{theirs} vs model {own})")
        return "; ".join(parts) or "none"


def compare_state(model: nn.Module | Mapping[str, torch.Tensor],
                  state: Mapping[str, torch.Tensor],
                  ignore: Callable[[str], bool] | None = None) -> StateMismatch:
    """Compare ``state`` with ``model``'s own state_dict (prefixes of both cleaned)."""
    own = unwrap_model(model).state_dict() if isinstance(model, nn.Module) else model
    own, theirs = strip_prefixes(own), strip_prefixes(state)
    keep = (lambda k: not ignore(k)) if ignore is not None else (lambda k: True)
    return StateMismatch(
        missing=sorted(k for k in own if k not in theirs and keep(k)),
        unexpected=sorted(k for k in theirs if k not in own and keep(k)),
        shapes=sorted((k, tuple(theirs[k].shape), tuple(own[k].shape)) for k in own
                      if k in theirs and keep(k) and own[k].shape != theirs[k].shape))
