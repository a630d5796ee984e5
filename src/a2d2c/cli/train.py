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

ACCEPTS_OVERRIDES = True
DEFAULT_RECIPE = "fashion_mnist_default"
#: without --config, a run that names its own data or model starts from this neutral
#: recipe instead (no Fashion-MNIST subset, threads or model settings inherited)
BASE_RECIPE = "base"


def default_recipe(overrides: dict) -> str:
    """The recipe of a run given no --config: the offline default, or the neutral base."""
    names_own = any(k in overrides.get(sec, {}) for sec, k in (("data", "name"),
                                                               ("model", "name")))
    return BASE_RECIPE if names_own else DEFAULT_RECIPE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="YAML",
                        help="a shipped recipe's name (see `a2d2c configs`) or a YAML file "
                             "(default: fashion_mnist_default; 'base' when --data.name or "
                             "--model.name is given; the checkpoint's own config with "
                             "--resume)")
    parser.add_argument("--resume", default=None, metavar="CKPT",
                        help="continue from a checkpoint (e.g. runs/x/last.pt)")
    parser.add_argument("--resume-allow-changed", action="store_true",
                        help="with --resume: continue although model options were changed "
                             "(by default a changed model option is an error)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit (reads no data)")
    parser.epilog = ("Any config key can be overridden as --section.key value, e.g. "
                     "--optim.lr 0.1 --data.root /data/cifar --train.output_dir runs/x.")


def build_config(args: argparse.Namespace):
    from ..engine import config_from_dict, config_to_dict, load_checkpoint, load_config
    from ..engine.checkpoint import RESUME_KEYS
    from ..engine.config import _merge, parse_overrides, validate_config

    overrides = parse_overrides(getattr(args, "overrides", []) or [])
    if args.resume and not args.config:
        stored = load_checkpoint(args.resume, require=RESUME_KEYS)["config"]
        base = config_to_dict(config_from_dict(stored))
        cfg = config_from_dict(_merge(base, overrides))
        validate_config(cfg)
        return cfg
    return load_config(args.config or default_recipe(overrides), overrides)


def main(args: argparse.Namespace) -> int:
    # Errors propagate to the CLI's one error path (a2d2c.cli.errors): one line, exit 2
    # for config/data/checkpoint/filesystem errors, 1 for run-time failures.
    from ..engine import StopRequest, fit, handle_signals
    from ..engine.config import config_to_dict

    cfg = build_config(args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    stop = StopRequest()
    with handle_signals(stop):
        result = fit(cfg, resume=args.resume, stop=stop,
                     allow_changed_model=getattr(args, "resume_allow_changed", False))
    if result.status == "interrupted":
        return 128 + int(result.signum or 15)
    m = result.final_metrics
    if "val_top1" in m:
        print(f"final: {cfg.model.name} on {cfg.data.name} (val/test split): top-1 "
              f"{m['val_top1']:.2f}%, top-5 {m['val_top5']:.2f}% after {result.epoch} epochs "
              f"(best top-1 {result.best_top1:.2f}%); outputs in {result.output_dir}")
    return 0
