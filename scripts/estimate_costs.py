"""Estimated GPU cost of every paper-scale recipe (a2d2c/configs/cifar100, a2d2c/configs/imagenet).

An estimate from first principles, not a measurement:

    FLOPs of a run = 2 · MAdds_train/image · 3 (forward + backward) · train images · epochs
                   + 2 · MAdds_eval/image · val images · epochs   (one evaluation per epoch)
    GPU-hours      = FLOPs / (peak bf16 FLOP/s · utilisation) / 3600

MAdds come from ``a2d2c.profiling.count_madds`` (FlopCounterMode on this CPU):
``MAdds_eval`` at batch 1 in eval mode (the papers' convention), ``MAdds_train`` per
image of a batch-2 training-mode pass — the path training runs (``impl="auto"`` picks
the plus form, K convolutions per dynamic layer, for batches larger than one).

    python3 scripts/estimate_costs.py [--markdown PATH] [--tables 1 4]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {  # name: (classes, train images, val images, default side)
    "cifar100": (100, 50_000, 10_000, 32),
    "imagenet": (1000, 1_281_167, 50_000, 224),
}
PEAK_BF16 = {"A100": 312e12, "H100": 989e12}  # dense bf16 tensor-core FLOP/s (SXM)
# Assumed sustained fraction of the bf16 peak (low, high) by (family, dataset).
# Assumptions, not measurements: dense ResNets at 224² fill a GPU far better than 32²
# inputs (small maps, launch-bound) or MobileNetV2 (depthwise convs, memory-bound).
UTILISATION = {
    ("resnet", "imagenet"): (0.20, 0.35),
    ("resnet", "cifar100"): (0.05, 0.15),
    ("mobilenetv2", "imagenet"): (0.04, 0.10),
    ("mobilenetv2", "cifar100"): (0.02, 0.05),
}


def profile_config(path: Path) -> dict:
    from a2d2c.engine import load_config
    from a2d2c.models import create_model
    from a2d2c.profiling import count_madds, count_params

    cfg = load_config(path)
    classes, n_train, n_val, side = DATASETS[cfg.data.name]
    side = cfg.data.img_size or side
    torch.manual_seed(0)
    model = create_model(cfg.model.name, num_classes=classes, in_chans=3, **cfg.model.kwargs)
    inference = count_madds(model, (3, side, side), batch_size=1)
    # the training path: a batch of 2 in training mode (sampling as in training)
    from torch.utils.flop_counter import FlopCounterMode

    from a2d2c.profiling import _AGGREGATION_OPS, _elementwise_fma_flop

    counter = FlopCounterMode(display=False, depth=1, custom_mapping={
        op: _elementwise_fma_flop for op in _AGGREGATION_OPS})
    model.train()
    with torch.no_grad(), counter:
        model(torch.randn(2, 3, side, side))
    train_madds = counter.get_total_flops() / 2 / 2
    family = "mobilenetv2" if cfg.model.name.startswith("mobilenetv2") else "resnet"
    return {"config": path.relative_to(ROOT).as_posix(), "model": cfg.model.name,
            "dataset": cfg.data.name, "side": side, "epochs": cfg.train.epochs,
            "batch": cfg.data.batch_size, "params": count_params(model),
            "madds_eval": inference.madds, "madds_train": train_madds, "family": family,
            "n_train": n_train, "n_val": n_val}


def run_flops(row: dict) -> float:
    return (6 * row["madds_train"] * row["n_train"] + 2 * row["madds_eval"] * row["n_val"]
            ) * row["epochs"]


def gpu_hours(row: dict, gpu: str) -> tuple[float, float]:
    lo, hi = UTILISATION[row["family"], row["dataset"]]
    flops = run_flops(row)
    return (flops / (PEAK_BF16[gpu] * hi) / 3600, flops / (PEAK_BF16[gpu] * lo) / 3600)


def eight_gpu_wall(rows: list[dict], gpu: str) -> tuple[float, float]:
    """Wall hours of a table's runs on one 8-GPU machine (assumed scheduling).

    ImageNet: one run after another, each on 8 GPUs with DDP at a scaling efficiency of
    0.9 (low) to 0.7 (high). CIFAR-100: up to 8 independent single-GPU runs side by side,
    ``ceil(runs / 8)`` rounds, each as long as its longest run.
    """
    lo = hi = 0.0
    cifar = [r for r in rows if r["dataset"] == "cifar100"]
    for r in rows:
        if r["dataset"] != "cifar100":
            a, b = gpu_hours(r, gpu)
            lo, hi = lo + a / (8 * 0.9), hi + b / (8 * 0.7)
    for i in range(0, len(cifar), 8):
        chunk = cifar[i:i + 8]
        lo += max(gpu_hours(r, gpu)[0] for r in chunk)
        hi += max(gpu_hours(r, gpu)[1] for r in chunk)
    return lo, hi


def table_of(path: str) -> int:
    return int(re.search(r"table(\d+)_", path).group(1))


def fmt_h(lo: float, hi: float) -> str:
    def one(v: float) -> str:
        return f"{v:.2f}" if v < 1 else f"{v:.1f}" if v < 10 else f"{v:.0f}"
    return f"{one(lo)}–{one(hi)}"


def render(rows: list[dict]) -> str:
    out = ["| table | config | model | input | epochs | params | GMAdds (eval, B=1) | "
           "GMAdds/img (train path) | PFLOPs / run | A100 GPU-h | H100 GPU-h |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, h = gpu_hours(r, "A100"), gpu_hours(r, "H100")
        out.append(f"| {table_of(r['config'])} | `{Path(r['config']).name}` | {r['model']} | "
                   f"{r['side']}² | {r['epochs']} | {r['params'] / 1e6:.2f}M | "
                   f"{r['madds_eval'] / 1e9:.3f} | {r['madds_train'] / 1e9:.3f} | "
                   f"{run_flops(r) / 1e15:.0f} | {fmt_h(*a)} | {fmt_h(*h)} |")
    out += ["", "| table | runs | 1 GPU: A100 h | 1 GPU: H100 h | 8 GPUs: A100 h (wall) | "
            "8 GPUs: H100 h (wall) |", "|---|---|---|---|---|---|"]
    per: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        per[table_of(r["config"])].append(r)
    for t in sorted(per):
        cells = [str(len(per[t]))]
        for gpu in ("A100", "H100"):
            cells.append(fmt_h(*(sum(gpu_hours(r, gpu)[i] for r in per[t]) for i in (0, 1))))
        for gpu in ("A100", "H100"):
            cells.append(fmt_h(*eight_gpu_wall(per[t], gpu)))
        out.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--markdown", default=None, help="also write the tables to this file")
    p.add_argument("--json", default=None, help="also write the profiled rows as JSON")
    p.add_argument("--tables", type=int, nargs="+", default=None)
    p.add_argument("--from-json", default=None, help="render rows saved by --json (no profiling)")
    args = p.parse_args(argv)
    if args.from_json:
        import json

        text = render(json.loads(Path(args.from_json).read_text()))
        print(text)
        if args.markdown:
            Path(args.markdown).write_text(text)
        return 0
    paths = sorted((ROOT / "src" / "a2d2c" / "configs").glob("cifar100/*.yaml")) + sorted(
        (ROOT / "src" / "a2d2c" / "configs").glob("imagenet/*.yaml"))
    paths = sorted(paths, key=lambda q: (table_of(q.name), q.name))
    if args.tables:
        paths = [q for q in paths if table_of(q.name) in args.tables]
    rows = []
    for q in paths:
        rows.append(profile_config(q))
        print(f"profiled {q.name}", file=sys.stderr, flush=True)
    text = render(rows)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
