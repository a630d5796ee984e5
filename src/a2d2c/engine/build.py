"""Builders from a :class:`~a2d2c.engine.config.Config`: model, optimizer, LR schedule."""

from __future__ import annotations

import torch
from torch import nn

from .config import Config, OptimConfig

__all__ = ["build_model", "build_optimizer", "list_model_names"]


# --- models: always through the registry (a2d2c.create_model) ----------------------
def list_model_names() -> list[str]:
    """Every registered model name."""
    from ..models import list_models

    return list_models()


def build_model(cfg: Config, num_classes: int, in_chans: int, *,
                pretrained: bool = True) -> nn.Module:
    """``create_model(cfg.model.name, num_classes=..., in_chans=..., **cfg.model.kwargs)``,
    initialised from ``cfg.model.pretrained`` unless ``pretrained=False`` (a resumed or
    evaluated checkpoint brings its own weights)."""
    from ..models import create_model
    from ..models._pretrained import PretrainedError
    from .config import ConfigError

    try:
        return create_model(cfg.model.name, num_classes=num_classes, in_chans=in_chans,
                            pretrained=cfg.model.pretrained if pretrained else None,
                            **cfg.model.kwargs)
    except PretrainedError as e:  # reported like every other config problem
        raise ConfigError(f"model.pretrained: {e}") from None


# --- optimisation ------------------------------------------------------------------
def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    from .param_groups import param_groups  # per-kind weight decay (norms, biases, attention)

    params = param_groups(model, cfg.weight_decay, norm_weight_decay=cfg.norm_weight_decay,
                          bias_weight_decay=cfg.bias_weight_decay,
                          attention_weight_decay=cfg.attention_weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optim.name={cfg.name!r}: choose sgd or adamw")
