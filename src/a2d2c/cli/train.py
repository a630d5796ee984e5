"""``a2d2c train``: train a registered model from a YAML recipe.

    a2d2c train                                   # the offline default (Fashion-MNIST)
    a2d2c train --config cifar100/table1_resnet18_a2d2c_plus --data.root data  # shipped recipe
    a2d2c train --config my_recipe.yaml          # or a file
    a2d2c train --config ... --optim.lr 0.1 --train.epochs 5   # dotted overrides
    a2d2c train --resume runs/x/last.pt          # continue exactly where it stopped
    torchrun --nproc_per_node=8 -m a2d2c train --config ...    # several processes
"""

from __future__ import annotations

import argparse
import sys

ACCEPTS_OVERRIDES = True
DEFAULT_RECIPE = "fashion_mnist_default"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="YAML",
                        help="a shipped recipe's name (see `a2d2c configs`) or a YAML file "
                             "(default: fashion_mnist_default, or the checkpoint's own "
                             "config with --resume)")
    parser.add_argument("--resume", default=None, metavar="CKPT",
                        help="continue from a checkpoint (e.g. runs/x/last.pt)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit (reads no data)")
    parser.epilog = ("Any config key can be overridden as --section.key value, e.g. "
                     "--optim.lr 0.1 --data.root /data/cifar --train.output_dir runs/x.")


def build_config(args: argparse.Namespace):
    from ..engine import config_from_dict, config_to_dict, load_checkpoint, load_config
    from ..engine.config import _merge, parse_overrides, validate_config

    overrides = parse_overrides(getattr(args, "overrides", []) or [])
    if args.resume and not args.config:
        base = config_to_dict(config_from_dict(load_checkpoint(args.resume)["config"]))
        cfg = config_from_dict(_merge(base, overrides))
        validate_config(cfg)
        return cfg
    return load_config(args.config or DEFAULT_RECIPE, overrides)


def main(args: argparse.Namespace) -> int:
    from ..data import DatasetNotFoundError
    from ..engine import (
        CheckpointError,
        ConfigError,
        NonFiniteLossError,
        StopRequest,
        fit,
        handle_signals,
    )
    from ..engine.config import config_to_dict

    try:
        cfg = build_config(args)
    except (ConfigError, CheckpointError) as e:
        print(f"a2d2c train: error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    stop = StopRequest()
    try:
        with handle_signals(stop):
            result = fit(cfg, resume=args.resume, stop=stop)
    except (ConfigError, CheckpointError, DatasetNotFoundError, NonFiniteLossError) as e:
        print(f"a2d2c train: error: {e}", file=sys.stderr)
        return 1 if not isinstance(e, ConfigError) else 2
    if result.status == "interrupted":
        return 128 + int(result.signum or 15)
    m = result.final_metrics
    if "val_top1" in m:
        print(f"final: {cfg.model.name} on {cfg.data.name} (val/test split): top-1 "
              f"{m['val_top1']:.2f}%, top-5 {m['val_top5']:.2f}% after {result.epoch} epochs "
              f"(best top-1 {result.best_top1:.2f}%); outputs in {result.output_dir}")
    return 0
