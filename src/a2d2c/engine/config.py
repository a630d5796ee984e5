"""The run configuration: YAML recipe → CLI overrides → validated dataclasses → saved YAML.

One :class:`Config` object describes a run; builders read it and nothing else::

    cfg = load_config("cifar100/table1_resnet18_a2d2c_plus",   # a shipped recipe, or a path
                      overrides=["--optim.lr", "0.1", "--train.epochs=2"])
    save_config(cfg, "runs/x/config.yaml")     # the resolved config, beside the run

* A recipe may include others with ``_base_: path`` (or a list of paths), relative to
  the including file; later files and then overrides win, dictionaries merge key by key.
* Overrides are ``--section.key value`` or ``--section.key=value`` pairs; values are
  parsed as YAML (``0.1``, ``true``, ``[30, 60, 90]``, ``null``, ``{num_kernels: 8}``);
  ``--model.kwargs.num_kernels 8`` sets one entry of a dict field.
* Unknown keys, wrongly typed values and invalid combinations raise
  :class:`ConfigError` naming the key, the value and what is allowed — before any data
  is read or model built.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "EmaConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TemperatureConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "load_yaml_recipe",
    "parse_overrides",
    "resolve_recipe",
    "save_config",
    "validate_config",
]


class ConfigError(ValueError):
    """An invalid configuration (unknown key, wrong type, impossible combination)."""


@dataclass
class ModelConfig:
    #: a registered model name (``a2d2c.list_models()``)
    name: str = "resnet18_a2d2c"
    #: keyword overrides for ``a2d2c.create_model`` (num_kernels, conv_kwargs, stem, ...)
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: convert BatchNorm to SyncBatchNorm when training on several processes
    sync_bn: bool = False
    #: initial weights: true (torchvision's ImageNet weights of the static architecture,
    #: from the torch hub cache), a .pth/.pt/.safetensors file, or "timm:<name>"
    pretrained: bool | str | None = None


@dataclass
class DataConfig:
    #: a registered dataset (``a2d2c.data.list_datasets()``)
    name: str = "fashion_mnist"
    #: dataset folder (default: ``data/`` for CIFAR-100, Debian's folder for Fashion-MNIST)
    root: str | None = None
    #: fetch missing data with torchvision (needs internet)
    download: bool = False
    #: global training batch size (split over processes)
    batch_size: int = 128
    #: global evaluation batch size (default: batch_size)
    eval_batch_size: int | None = None
    #: loader worker processes per training process
    workers: int = 0
    #: random crop + flip on the training split
    augment: bool = True
    #: side of the images the model sees (default: the dataset's own)
    img_size: int | None = None
    #: ImageNet: resize before cropping (default: img_size * 256 / 224)
    resize: int | None = None
    #: ImageNet: resize to resize × resize instead of the shorter side to resize
    square_resize: bool = False
    #: use this many training images (a fixed random subset); synthetic: generate this many
    train_samples: int | None = None
    #: the same for the evaluation split
    val_samples: int | None = None
    #: seed of the subsets (fixed, so that runs with different seeds see the same images)
    subset_seed: int = 0
    #: synthetic only: number of classes and input channels
    num_classes: int | None = None
    in_chans: int | None = None
    #: per-sample auto-augmentation (torchvision v2): randaugment | trivialaugment |
    #: autoaugment | null
    auto_augment: str | None = None
    #: autoaugment's policy: imagenet | cifar10 | svhn
    auto_augment_policy: str = "imagenet"
    #: randaugment's number of operations and magnitude (0..30)
    rand_augment_ops: int = 2
    rand_augment_magnitude: int = 9
    #: probability of v2.RandomErasing on a training image (after normalisation)
    random_erasing: float = 0.0
    #: Beta(α, α) of v2.MixUp / v2.CutMix on training batches (0: off; both: one per batch)
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.0625
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    #: clip the global gradient norm to this value (null: no clipping)
    clip_grad_norm: float | None = None
    #: gradient accumulation: optimizer steps every this many batches (effective batch
    #: data.batch_size × accum_steps; schedules count optimizer steps)
    accum_steps: int = 1
    #: weight decay of normalisation layers' weights and biases (null: weight_decay)
    norm_weight_decay: float | None = None
    #: weight decay of every other bias (null: weight_decay)
    bias_weight_decay: float | None = None
    #: weight decay of the dynamic layers' attention parameters (null: by the rules above)
    attention_weight_decay: float | None = None


@dataclass
class ScheduleConfig:
    name: str = "step"  # step | cosine | constant
    #: step: epochs at which the LR is multiplied by gamma
    milestones: list[int] = field(default_factory=lambda: [30, 60, 90])
    gamma: float = 0.1
    #: linear warm-up from warmup_factor * lr over this many epochs (per iteration)
    warmup_epochs: float = 0.0
    warmup_factor: float = 0.01
    #: cosine: the final learning rate
    min_lr: float = 0.0


@dataclass
class TemperatureConfig:
    start: float = 30.0
    end: float = 1.0
    anneal_epochs: float = 10.0


@dataclass
class EmaConfig:
    #: decay of the exponential moving average of the weights (null: no EMA), e.g. 0.9998
    decay: float | None = None
    #: warm the decay up as min(decay, (1 + n) / (10 + n)) over the first updates n
    warmup: bool = True
    #: update the average every this many optimizer steps
    every: int = 1


@dataclass
class TrainConfig:
    epochs: int = 100
    seed: int = 0
    #: auto (cuda when available) | cpu | cuda | cuda:N
    device: str = "auto"
    #: none | bf16 | fp16 (fp16 uses a GradScaler; CUDA only)
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    #: where checkpoints, metrics and the resolved config go (null: a new folder
    #: runs/<data>-<model>-<time> for every run)
    output_dir: str | None = None
    #: let a fresh run replace an earlier run in an explicitly named output_dir
    overwrite: bool = False
    #: evaluate every this many epochs (and always after the last)
    eval_every: int = 1
    #: also write a mid-epoch checkpoint every this many steps (0: only at epoch ends)
    checkpoint_every: int = 0
    #: tqdm bars on rank 0 when stderr is a terminal; otherwise (SLURM, nohup, CI) a
    #: progress line every log_every steps when stdout is not a terminal
    progress: bool = True
    log_every: int = 50
    tensorboard: bool = False
    #: CPU threads per process (0: leave torch's default)
    threads: int = 0
    #: dynamic layers' impl="auto": time every exact path once per shape and run the
    #: fastest (a2d2c.ops.tuning, like cudnn.benchmark) instead of the cost model's pick
    impl_benchmark: bool = False
    #: validation images (the first N) for the per-epoch attention diagnostics of
    #: dynamic models (a2d2c.diagnostics, in metrics.jsonl and the progress line; 0: off)
    attention_stats: int = 64


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)


# ------------------------------------------------------------------------------ YAML
def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_yaml_recipe(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML recipe, resolving ``_base_`` includes (relative to the file)."""
    path = Path(path)
    try:
        found = path.is_file()
    except OSError as e:  # e.g. a name too long for the file system
        raise ConfigError(f"config file {str(path)[:200]!r} cannot be opened: "
                          f"{e.strerror or e}") from None
    if not found:
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"circular _base_ include: {' -> '.join(map(str, _seen))} -> {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, got {type(data).__name__}")
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of file names, "
                          f"got {bases!r}")
    merged: dict[str, Any] = {}
    for b in bases:
        merged = _merge(merged, load_yaml_recipe(path.parent / b, (*_seen, path.resolve())))
    return _merge(merged, data)


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """``["--a.b", "1", "--c=x"]`` → ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    items = list(args)
    i = 0
    while i < len(items):
        tok = items[i]
        if not tok.startswith("--") or len(tok) == 2:
            raise ConfigError(f"expected an option --section.key, got {tok!r}")
        key = tok[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(items) or items[i + 1].startswith("--"):
                raise ConfigError(f"option --{key} needs a value")
            raw = items[i + 1]
            i += 2
        key = key.replace("-", "_")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"option --{key} conflicts with an earlier option")
        node[parts[-1]] = value
    return out


# ------------------------------------------------------------------- dict <-> dataclass
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check (and gently coerce: int → float) ``value`` against a type annotation."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            # PyYAML reads YAML 1.1, where "5e-4" (no dot) is a string, not a float
            return True, float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        (arg,) = typing.get_args(tp) or (Any,)
        out = []
        for v in value:
            ok, v = _type_ok(v, arg)
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if origin is dict:
        return isinstance(value, dict), value
    raise TypeError(f"unsupported annotation {tp!r}")


def _describe(tp: Any) -> str:
    return str(tp).replace("typing.", "")


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=3)  # YAML keys may be ints
            hint = f"; did you mean {' or '.join(prefix + c for c in close)}?" if close else ""
            raise ConfigError(f"unknown config key {dotted!r}{hint} (valid in "
                              f"{prefix[:-1] or 'the top level'}: {', '.join(names)})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                keys = ", ".join(f.name for f in dataclasses.fields(tp))
                raise ConfigError(f"{dotted} must be a mapping of {keys}, got {value!r}")
            kwargs[key] = _build(tp, value, dotted + ".")
            continue
        ok, coerced = _type_ok(value, tp)
        if not ok:
            raise ConfigError(f"{dotted}={value!r} has the wrong type: expected {_describe(tp)}")
        kwargs[key] = coerced
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Build (and type-check) a :class:`Config`; missing keys keep their defaults."""
    return _build(Config, data, "")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of primitives (what checkpoints store and YAML holds)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    os.replace(tmp, path)


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] | Mapping = (),
                *, validate: bool = True) -> Config:
    """Recipe (a file, or a shipped recipe's name) → overrides → :class:`Config`, validated."""
    data = load_yaml_recipe(resolve_recipe(path)) if path is not None else {}
    over = parse_overrides(overrides) if not isinstance(overrides, Mapping) else overrides
    cfg = config_from_dict(_merge(data, over))
    if validate:
        validate_config(cfg)
    return cfg


def resolve_recipe(name: str | os.PathLike) -> Path:
    """A recipe path as given, or the shipped recipe of that name (``a2d2c configs``)."""
    from ..resources import ConfigNotFoundError, resolve_config

    try:
        return resolve_config(name)
    except ConfigNotFoundError as e:
        raise ConfigError(str(e)) from None


# ----------------------------------------------------------------------- validation
_CHOICES = {
    ("optim", "name"): ("sgd", "adamw"),
    ("schedule", "name"): ("step", "cosine", "constant"),
    ("train", "amp"): ("none", "bf16", "fp16"),
}


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def validate_config(cfg: Config, *, check_model: bool = True) -> None:
    """Check values and combinations; raises :class:`ConfigError`. Reads no data."""
    from ..data import get_dataset_spec

    for (sec, key), allowed in _CHOICES.items():
        value = getattr(getattr(cfg, sec), key)
        if value not in allowed:
            _fail(f"{sec}.{key}", value, f"choose from {', '.join(allowed)}")
    try:
        spec = get_dataset_spec(cfg.data.name)
    except ValueError as e:
        raise ConfigError(f"data.name: {e}") from None
    d = cfg.data
    for key in ("num_classes", "in_chans", "resize"):
        if getattr(d, key) is not None and key not in spec.options:
            _fail(f"data.{key}", getattr(d, key), f"only for datasets that accept it, not "
                  f"{d.name!r}")
    if d.square_resize and "square_resize" not in spec.options:
        _fail("data.square_resize", True, f"only for imagefolder and imagenet, not {d.name!r}")
    for key in ("batch_size", "eval_batch_size", "train_samples", "val_samples", "img_size",
                "resize", "num_classes", "in_chans"):
        v = getattr(d, key)
        if v is not None and v < 1:
            _fail(f"data.{key}", v, "must be >= 1")
    if d.workers < 0:
        _fail("data.workers", d.workers, "must be >= 0")
    o = cfg.optim
    if not o.lr > 0:
        _fail("optim.lr", o.lr, "must be > 0")
    if not 0 <= o.momentum < 1:
        _fail("optim.momentum", o.momentum, "must be in [0, 1)")
    if o.nesterov and (o.name != "sgd" or o.momentum == 0):
        _fail("optim.nesterov", True, "needs optim.name=sgd and momentum > 0")
    if o.weight_decay < 0:
        _fail("optim.weight_decay", o.weight_decay, "must be >= 0")
    if not 0 <= o.label_smoothing < 1:
        _fail("optim.label_smoothing", o.label_smoothing, "must be in [0, 1)")
    if o.clip_grad_norm is not None and not o.clip_grad_norm > 0:
        _fail("optim.clip_grad_norm", o.clip_grad_norm, "must be > 0 or null")
    _validate_recipe_features(cfg)
    s, t = cfg.schedule, cfg.train
    if t.epochs < 1:
        _fail("train.epochs", t.epochs, "must be >= 1")
    if s.name == "step":
        m = s.milestones
        if any(b <= a for a, b in itertools.pairwise(m)) or any(x < 1 for x in m):
            _fail("schedule.milestones", m, "must be increasing epochs >= 1")
    if not 0 < s.gamma <= 1:
        _fail("schedule.gamma", s.gamma, "must be in (0, 1]")
    if not 0 <= s.warmup_epochs < t.epochs:
        _fail("schedule.warmup_epochs", s.warmup_epochs,
              f"must be in [0, train.epochs={t.epochs})")
    if not 0 < s.warmup_factor <= 1:
        _fail("schedule.warmup_factor", s.warmup_factor, "must be in (0, 1]")
    if not 0 <= s.min_lr < o.lr:
        _fail("schedule.min_lr", s.min_lr, f"must be in [0, optim.lr={o.lr})")
    tc = cfg.temperature
    if not (0 < tc.start < math.inf and 0 < tc.end < math.inf):
        _fail("temperature.start/end", (tc.start, tc.end), "must both be finite and > 0")
    if not 0 <= tc.anneal_epochs < math.inf:
        _fail("temperature.anneal_epochs", tc.anneal_epochs, "must be >= 0")
    if t.eval_every < 1:
        _fail("train.eval_every", t.eval_every, "must be >= 1")
    if t.log_every < 0:
        _fail("train.log_every", t.log_every, "must be >= 0 (0: no progress lines)")
    if t.checkpoint_every < 0:
        _fail("train.checkpoint_every", t.checkpoint_every, "must be >= 0")
    if t.threads < 0:
        _fail("train.threads", t.threads, "must be >= 0")
    if t.attention_stats < 0:
        _fail("train.attention_stats", t.attention_stats, "must be >= 0 (0: off)")
    dev = t.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        _fail("train.device", dev, "use auto, cpu, cuda or cuda:N")
    if t.amp == "fp16" and resolve_device_type(dev) != "cuda":
        _fail("train.amp", "fp16", "fp16 mixed precision needs CUDA; use bf16 on CPU")
    if cfg.model.sync_bn and resolve_device_type(dev) != "cuda":
        _fail("model.sync_bn", True, "SyncBatchNorm runs on CUDA only (torch's limitation)")
    if check_model:
        _validate_model(cfg.model)


def _validate_recipe_features(cfg: Config) -> None:
    """EMA, accumulation, weight-decay groups, augmentations, pretrained weights."""
    from ..data.augment import AUTO_AUGMENT_POLICIES, AUTO_AUGMENTS

    d, o, e = cfg.data, cfg.optim, cfg.ema
    if d.auto_augment is not None and d.auto_augment not in AUTO_AUGMENTS:
        _fail("data.auto_augment", d.auto_augment, f"choose from {', '.join(AUTO_AUGMENTS)} "
              "or null")
    if d.auto_augment_policy not in AUTO_AUGMENT_POLICIES:
        _fail("data.auto_augment_policy", d.auto_augment_policy,
              f"choose from {', '.join(AUTO_AUGMENT_POLICIES)}")
    if d.rand_augment_ops < 0:
        _fail("data.rand_augment_ops", d.rand_augment_ops, "must be >= 0")
    if not 0 <= d.rand_augment_magnitude <= 30:
        _fail("data.rand_augment_magnitude", d.rand_augment_magnitude, "must be in [0, 30]")
    if not 0 <= d.random_erasing <= 1:
        _fail("data.random_erasing", d.random_erasing, "must be a probability in [0, 1]")
    for key in ("mixup_alpha", "cutmix_alpha"):
        if getattr(d, key) < 0:
            _fail(f"data.{key}", getattr(d, key), "must be >= 0 (0: off)")
    if (d.auto_augment or d.random_erasing) and not d.augment:
        _fail("data.augment", False, "data.auto_augment/random_erasing need data.augment: true")
    if o.accum_steps < 1:
        _fail("optim.accum_steps", o.accum_steps, "must be >= 1")
    for key in ("norm_weight_decay", "bias_weight_decay", "attention_weight_decay"):
        v = getattr(o, key)
        if v is not None and v < 0:
            _fail(f"optim.{key}", v, "must be >= 0 or null (null: optim.weight_decay)")
    if e.decay is not None and not 0 < e.decay < 1:
        _fail("ema.decay", e.decay, "must be in (0, 1) or null (no EMA)")
    if e.every < 1:
        _fail("ema.every", e.every, "must be >= 1")
    p = cfg.model.pretrained
    if p is not None and not isinstance(p, bool) and not p:
        _fail("model.pretrained", p, "use true, a weights file, 'timm:<name>' or null")
    dpr = cfg.model.kwargs.get("drop_path_rate")
    if dpr is not None and (isinstance(dpr, bool) or not isinstance(dpr, (int, float))
                            or not 0 <= dpr < 1):
        _fail("model.kwargs.drop_path_rate", dpr, "must be in [0, 1)")


def resolve_device_type(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.split(":")[0]


def _validate_model(m: ModelConfig) -> None:
    from .build import list_model_names

    names = list_model_names()
    if m.name not in names:
        close = difflib.get_close_matches(m.name, names, n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"model.name={m.name!r} is not a registered model{hint} "
                          f"({len(names)} registered; see a2d2c.list_models())")
    for bad in ("num_classes", "in_chans"):
        if bad in m.kwargs:
            raise ConfigError(f"model.kwargs.{bad} is not allowed: it comes from the dataset")
    from ..models import model_arguments

    accepted = model_arguments(m.name)
    if accepted is not None:
        for key in m.kwargs:
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=2)
                hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise ConfigError(f"model.kwargs.{key} is not an argument of {m.name!r}{hint} "
                                  f"(it accepts {', '.join(sorted(accepted))})")
