"""Plot ``a2d2c bench --preset grid``: auto's regret and ratio to static over the grid.

    python3 scripts/plot_grid.py benchmarks/results/bench_grid_reduced_cpu1t.csv

Writes ``<csv stem>.png`` beside the CSV and prints a summary (median and max regret,
median ratio to static, per layer and mode; also of the ``tuned`` rows — ``auto`` with
measured choice — where the grid has them).
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LAYERS = ("a2d2c", "condconv", "dynamicconv", "odconv")
MARKERS = {"a2d2c": "o", "condconv": "s", "dynamicconv": "^", "odconv": "D"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    args = parser.parse_args()
    path = Path(args.csv)
    with path.open() as f:
        every = list(csv.DictReader(f))
    rows = [r for r in every if r["impl"] == "auto"]
    # The noise floor: auto and the path it chose run the same computation, so their time
    # ratio would be 1 on a quiet machine.
    timed = {(r["case"], r["layer"], r["impl"]): float(r["median_ms"]) for r in every}
    same = sorted(float(r["median_ms"]) / timed[(r["case"], r["layer"], r["auto_choice"])]
                  for r in rows if (r["case"], r["layer"], r["auto_choice"]) in timed)
    if same:
        print(f"noise: auto / the path it chose (same computation) over {len(same)} pairs: "
              f"median {statistics.median(same):.2f}, 10-90% {same[len(same) // 10]:.2f}-"
              f"{same[9 * len(same) // 10]:.2f}")
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    for col, mode in enumerate(("train", "infer")):
        for layer in LAYERS:
            sub = [r for r in rows if r["layer"] == layer and r["mode"] == mode]
            if not sub:
                continue
            macs = [int(r["batch"]) * int(r["channels"]) ** 2 * 9 * int(r["size"]) ** 2
                    for r in sub]
            axes[0, col].scatter(macs, [float(r["regret"]) for r in sub], s=14,
                                 marker=MARKERS[layer], label=layer, alpha=0.7)
            axes[1, col].scatter(macs, [float(r["ratio"]) for r in sub], s=14,
                                 marker=MARKERS[layer], label=layer, alpha=0.7)
            regrets = [float(r["regret"]) for r in sub]
            ratios = [float(r["ratio"]) for r in sub]
            print(f"{mode:5s} {layer:12s} points {len(sub):3d}  regret median "
                  f"{statistics.median(regrets):.2f} max {max(regrets):.2f}  ratio to static "
                  f"median {statistics.median(ratios):.2f}")
            tuned = [float(r["regret"]) for r in every if r["impl"] == "tuned"
                     and r["layer"] == layer and r["mode"] == mode]
            if tuned:  # impl="auto" with measured choice (a2d2c.ops.tuning)
                print(f"{mode:5s} {layer:12s} tuned  {len(tuned):3d}  regret median "
                      f"{statistics.median(tuned):.2f} max {max(tuned):.2f}  share <= 1.15 "
                      f"{sum(t <= 1.15 for t in tuned) / len(tuned):.0%}")
        axes[0, col].axhline(1.15, color="k", lw=0.8, ls="--")
        axes[0, col].set_title(f"{mode}: auto's regret (auto / fastest exact path)")
        axes[1, col].axhline(1.3, color="k", lw=0.8, ls="--")
        axes[1, col].set_title(f"{mode}: auto's time / static conv")
        for row in range(2):
            axes[row, col].set_xscale("log")
            axes[row, col].set_yscale("log")
            axes[row, col].grid(True, which="both", alpha=0.3)
        axes[1, col].set_xlabel("static conv MACs per step (B·C²·9·H·W)")
    axes[0, 0].legend()
    loads = [float(r["load1"]) for r in rows]
    fig.suptitle(f"{path.name}: {len({r['case'] for r in rows})} points, "
                 f"threads {rows[0]['threads']}, 1-min load {min(loads):.1f}-{max(loads):.1f}")
    fig.tight_layout()
    png = path.with_suffix(".png")
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
