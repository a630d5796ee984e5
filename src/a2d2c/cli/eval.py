"""``a2d2c eval``: evaluate a checkpoint (``.pt``) or released ``.safetensors`` weights.

    a2d2c eval --checkpoint runs/x/best.pt
    a2d2c eval --checkpoint runs/x/model.safetensors --data.root /data/cifar
"""

from __future__ import annotations

import argparse

ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="last.pt / best.pt of a run, or model.safetensors")
    parser.epilog = ("The model and data come from the config stored with the weights; "
                     "override any key as --section.key value (e.g. --data.root, "
                     "--data.eval_batch_size, --train.device).")


def main(args: argparse.Namespace) -> int:
    # errors: the CLI's one error path (a2d2c.cli.errors), one line and exit 2
    from ..engine import evaluate_checkpoint
    from ..engine.config import parse_overrides

    overrides = parse_overrides(getattr(args, "overrides", []) or [])
    m = evaluate_checkpoint(args.checkpoint, overrides)
    line = (f"{m['model_name']} on {m['dataset']} (val/test split, {m['samples']} images): "
            f"top-1 {m['top1']:.2f}%, top-5 {m['top5']:.2f}%, loss {m['loss']:.4f}")
    if m.get("recorded_top1") is not None:
        line += f" (recorded at training time: top-1 {m['recorded_top1']:.2f}%)"
    print(line)
    if "ema" in m:
        e = m["ema"]
        line = (f"EMA weights: top-1 {e['top1']:.2f}%, top-5 {e['top5']:.2f}%, loss "
                f"{e['loss']:.4f}")
        if m.get("recorded_ema_top1") is not None:
            line += f" (recorded at training time: top-1 {m['recorded_ema_top1']:.2f}%)"
        print(line)
    return 0
