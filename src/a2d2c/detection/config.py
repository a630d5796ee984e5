"""Detection run configuration: YAML recipe → ``key=value`` overrides → one frozen dict.

A config file has the sections of :class:`DetectionConfig` (``model``, ``data``,
``train``, ``temperature``) plus ``output_dir`` and ``device``. Unknown keys are errors
that list the allowed ones. The resolved config is saved as ``config.yaml`` beside the
checkpoints and inside every checkpoint, so ``a2d2c detect eval --checkpoint`` can
rebuild the model without the recipe.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DataConfig",
    "DetectionConfig",
    "ModelConfig",
    "TemperatureConfig",
    "TrainConfig",
    "load_config",
    "save_config",
]


@dataclass
class ModelConfig:
    """The detector: Mask R-CNN + FPN over a registry backbone."""

    backbone: str = "resnet50"
    #: "auto" (A²D²C: stages2-4-3x3; others: registry default), null, or a placement name
    placement: str | None = "auto"
    num_kernels: int | None = None
    conv_kwargs: dict[str, Any] = field(default_factory=dict)
    width_mult: float | None = None
    #: ResNet-50 "v1" (stride on the first 1×1) or "v1.5" (on the 3×3); null = registry default
    variant: str | None = None
    #: "frozen" (FrozenBatchNorm2d, the 1x recipe) or "batchnorm" (trainable, for runs
    #: from scratch such as the synthetic-shapes config)
    norm: str = "frozen"
    trainable_layers: int = 3
    fpn_channels: int = 256
    min_size: int = 800
    max_size: int = 1333
    #: classification checkpoint of the same backbone (engine format, state_dict or
    #: .safetensors), or null to start from scratch
    pretrained: str | None = None
    #: hidden width of the box head's two FC layers (torchvision/mmdetection: 1024)
    box_head_dim: int = 1024
    #: channels of the mask head's four 3×3 convs and its deconv (256)
    mask_head_dim: int = 256
    #: anchor size per FPN level P2..P6 (null: torchvision's 32, 64, 128, 256, 512), each
    #: with aspect ratios 0.5, 1, 2
    anchor_sizes: list[int] | None = None
    #: further torchvision MaskRCNN options by name (a2d2c.detection.MASKRCNN_OPTIONS)
    detector_kwargs: dict[str, Any] = field(default_factory=dict)
    #: set from the dataset (classes + background); never set by hand
    num_classes: int | None = None


@dataclass
class DataConfig:
    """A dataset in the COCO 2017 layout under ``root``."""

    root: str = "data/coco"
    train_split: str = "train2017"
    val_split: str = "val2017"
    workers: int = 4
    hflip_prob: float = 0.5
    aspect_ratio_grouping: bool = True


@dataclass
class TrainConfig:
    """The 1x schedule: 12 epochs, LR ×0.1 at epochs 8 and 11, SGD 0.02 for 16 images."""

    epochs: int = 12
    #: images per process (GPU); the total batch is batch_size × world size
    batch_size: int = 2
    #: learning rate for a total batch of ``lr_batch_size`` images, scaled linearly
    lr: float = 0.02
    lr_batch_size: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_steps: list[int] = field(default_factory=lambda: [8, 11])
    lr_gamma: float = 0.1
    warmup_iters: int = 500
    warmup_factor: float = 0.001
    #: mixed precision on CUDA (bfloat16 autocast)
    amp: bool = False
    seed: int = 0
    #: cap on iterations per epoch (smoke runs); null = the whole dataset
    max_iters_per_epoch: int | None = None
    print_freq: int = 20
    #: evaluate every this many epochs (and after the last); 0 = only after the last
    eval_every: int = 1
    clip_grad_norm: float | None = None


@dataclass
class TemperatureConfig:
    """Softmax temperature of the dynamic layers during detection training.

    ``mode``:
      * ``"auto"`` (default): ``constant`` at ``end`` when ``model.pretrained`` is set (a
        finished classification schedule left τ = 1, and re-heating a trained attention
        to τ = 30 would flatten it to nearly uniform and throw away what it learned),
        otherwise ``anneal``;
      * ``"constant"``: τ = ``end`` throughout;
      * ``"anneal"``: ``start`` → ``end`` linearly per iteration over ``anneal_epochs``
        (from scratch: soft, near-uniform attention first, as SPEC §2, compressed to the
        first epoch because the 1x schedule has only 12).
    """

    mode: str = "auto"
    start: float = 30.0
    end: float = 1.0
    anneal_epochs: float = 1.0


@dataclass
class DetectionConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)
    output_dir: str = "runs/detection"
    #: "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> DetectionConfig:
        if self.model.norm not in ("frozen", "batchnorm"):
            raise ValueError(f"model.norm must be 'frozen' or 'batchnorm', got "
                             f"{self.model.norm!r}")
        if self.temperature.mode not in ("auto", "constant", "anneal"):
            raise ValueError(f"temperature.mode must be 'auto', 'constant' or 'anneal', got "
                             f"{self.temperature.mode!r}")
        for name in ("epochs", "batch_size", "lr_batch_size"):
            value = getattr(self.train, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"train.{name} must be an int >= 1, got {value!r}")
        if sorted(self.train.lr_steps) != list(self.train.lr_steps):
            raise ValueError(f"train.lr_steps must be increasing, got {self.train.lr_steps}")
        return self


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig,
             "temperature": TemperatureConfig}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(names)}")
    return cls(**values)


def _from_dict(raw: dict[str, Any]) -> DetectionConfig:
    if not isinstance(raw, dict):
        raise ValueError(f"a detection config must be a mapping, got {type(raw).__name__}")
    top = {k: v for k, v in raw.items() if k not in _SECTIONS}
    sections = {}
    for name, cls in _SECTIONS.items():
        value = raw.get(name) or {}
        if not isinstance(value, dict):
            raise ValueError(f"config section {name!r} must be a mapping, got {value!r}")
        sections[name] = _build(cls, value, f"section {name!r}")
    return _build(DetectionConfig, {**top, **sections}, "the top level").validate()


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> DetectionConfig:
    """Read a YAML recipe (or start from ``base`` / the defaults) and apply overrides.

    The classification engine's loader and override syntax (``a2d2c.engine.config``):
    a recipe may ``_base_``-include others; ``overrides`` are ``--section.key value`` /
    ``--section.key=value`` tokens, values parsed as YAML (``--train.lr 0.01``,
    ``--model.pretrained null``, ``--train.lr_steps [8,11]``). The older
    ``"section.key=value"`` strings are still accepted.
    """
    from ..engine.config import _merge, load_yaml_recipe, parse_overrides, resolve_recipe

    raw: dict[str, Any] = dict(base or {})
    if path is not None:
        # a file, or a shipped recipe (detection/maskrcnn_...)
        raw = load_yaml_recipe(resolve_recipe(path))
    tokens = [t if t.startswith("--") or "=" not in t else f"--{t}" for t in overrides or []]
    for t in tokens:
        if t.startswith("--") and t[2:].split("=", 1)[0].strip() == "":
            raise ValueError(f"override {t!r} must look like --section.key value")
    return _from_dict(_merge(raw, parse_overrides(tokens)))


def save_config(config: DetectionConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
