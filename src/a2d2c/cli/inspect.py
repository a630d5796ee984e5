"""``a2d2c inspect``: is a trained dynamic network dynamic? Attention diagnostics per layer.

    a2d2c inspect --checkpoint runs/x/best.pt
    a2d2c inspect --checkpoint runs/x/model.safetensors --samples 256 --png attn.png
    a2d2c inspect --checkpoint runs/x/last.pt --data cluttered_fashion_mnist --data.root DIR

Rebuilds the model from the config stored with the weights, runs it on the first
``--samples`` images of its dataset's validation split and prints
:func:`a2d2c.diagnostics.attention_stats` as a table (one line per layer and attention
head), then draws it into a PNG (needs matplotlib) and optionally writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="last.pt / best.pt of a run, or model.safetensors")
    parser.add_argument("--data", default=None, metavar="NAME",
                        help="dataset to inspect on (default: the one the model was trained "
                        "on); its validation split is used")
    parser.add_argument("--samples", type=int, default=512,
                        help="validation images to run (the first N; default 512)")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="batch size; the output change freezes attention to the mean "
                        "of each batch (default 128)")
    parser.add_argument("--png", default=None, metavar="PATH",
                        help="where to draw the plot (default: attention.png beside the "
                        "checkpoint); 'none' to skip")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows")
    parser.epilog = ("Override any key of the stored config as --section.key value (e.g. "
                     "--data.root, --train.device).")


def inspect_checkpoint(path: str, overrides: dict[str, Any] | None, *, samples: int,
                       batch_size: int) -> tuple[Any, Any]:
    """The :class:`~a2d2c.diagnostics.AttentionReport` of a checkpoint, and its config."""
    import torch

    from ..data import build_dataset, build_loader, dataset_info
    from ..diagnostics import attention_stats
    from ..engine.build import build_model
    from ..engine.checkpoint import load_model_state
    from ..engine.config import _merge, config_from_dict, config_to_dict, validate_config
    from ..engine.trainer import load_weights

    state, cfg = load_weights(path)
    if overrides:
        cfg = config_from_dict(_merge(config_to_dict(cfg), overrides))
    validate_config(cfg)
    cfg.data.eval_batch_size = batch_size
    device = torch.device("cuda" if cfg.train.device in ("auto", "cuda")
                          and torch.cuda.is_available() else "cpu")
    info = dataset_info(cfg.data)
    model = build_model(cfg, info.num_classes, info.in_chans)
    load_model_state(model, state, source=f"checkpoint {path}", expected_name=cfg.model.name)
    model.to(device)
    loader = build_loader(build_dataset(cfg.data.name, "val", cfg.data), cfg.data, train=False,
                          seed=cfg.train.seed)
    return attention_stats(model, loader, max_samples=samples, device=device), cfg


def main(args: argparse.Namespace) -> int:
    from ..data import DatasetNotFoundError
    from ..diagnostics import plot_attention_stats
    from ..engine import CheckpointError, ConfigError
    from ..engine.config import parse_overrides

    if args.samples < 1 or args.batch_size < 1:
        print("a2d2c inspect: error: --samples and --batch-size must be >= 1", file=sys.stderr)
        return 2
    try:
        overrides = parse_overrides(getattr(args, "overrides", []) or [])
        if args.data:
            overrides.setdefault("data", {})["name"] = args.data
        report, cfg = inspect_checkpoint(args.checkpoint, overrides, samples=args.samples,
                                         batch_size=args.batch_size)
    except (ConfigError, CheckpointError, DatasetNotFoundError) as e:
        print(f"a2d2c inspect: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    if not len(report):
        print(f"{cfg.model.name} has no dynamic layers: nothing to inspect")
        return 0
    print(f"{cfg.model.name} on {cfg.data.name} (val split, first {report.samples} images)")
    print(report.to_text())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dicts(), indent=1) + "\n")
        print(f"wrote {args.json}")
    png = args.png or str(Path(args.checkpoint).with_name("attention.png"))
    if png != "none":
        try:
            plot_attention_stats(report, png, f"{cfg.model.name} on {cfg.data.name}: attention "
                                 f"diagnostics ({report.samples} images)")
        except ImportError as e:
            print(f"a2d2c inspect: error: {e}", file=sys.stderr)
            return 1
        print(f"wrote {png}")
    return 0
