"""The training and evaluation engine.

* :func:`train_one_epoch`, :func:`evaluate`: loops usable with any model and loader.
* :func:`fit`: a whole run from a :class:`Config` (distributed, checkpoints, resume,
  signals, metrics); what ``a2d2c train`` calls.
* :func:`load_config`: YAML recipe → CLI overrides → validated :class:`Config`.
* Checkpoints: :func:`save_checkpoint` (atomic), :func:`load_checkpoint`
  (``weights_only=True``), :func:`save_safetensors`.
"""

from .build import build_model, build_optimizer, list_model_names
from .checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_model_state,
    restore_rng_state,
    save_checkpoint,
    save_safetensors,
    unwrap_model,
)
from .config import (
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TemperatureConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
    validate_config,
)
from .distributed import DistContext, cleanup_distributed, init_distributed
from .schedule import build_lr_scheduler, epoch_schedule
from .trainer import (
    EpochResult,
    FitResult,
    NonFiniteLossError,
    StopRequest,
    config_from_checkpoint,
    evaluate,
    evaluate_checkpoint,
    fit,
    handle_signals,
    load_model,
    load_weights,
    train_one_epoch,
)

__all__ = [
    "CheckpointError",
    "Config",
    "ConfigError",
    "DataConfig",
    "DistContext",
    "EpochResult",
    "FitResult",
    "ModelConfig",
    "NonFiniteLossError",
    "OptimConfig",
    "ScheduleConfig",
    "StopRequest",
    "TemperatureConfig",
    "TrainConfig",
    "build_lr_scheduler",
    "build_model",
    "build_optimizer",
    "capture_rng_state",
    "cleanup_distributed",
    "config_from_checkpoint",
    "config_from_dict",
    "config_to_dict",
    "epoch_schedule",
    "evaluate",
    "evaluate_checkpoint",
    "fit",
    "handle_signals",
    "init_distributed",
    "list_model_names",
    "load_checkpoint",
    "load_config",
    "load_model",
    "load_model_state",
    "load_weights",
    "restore_rng_state",
    "save_checkpoint",
    "save_config",
    "save_safetensors",
    "train_one_epoch",
    "unwrap_model",
    "validate_config",
]
