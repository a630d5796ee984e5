"""Refit the CPU constants of ``impl="auto"``'s cost model to a measured grid.

Reads ``a2d2c bench --preset grid`` CSVs and searches the constants of
:data:`a2d2c.ops.cost.COST_CONSTANTS` (every one but ``dense``, which stays 1) for the
lowest mean log-regret of the model's choice over every (point, layer) — the time of the
path the model picks over the fastest measured one — breaking ties by the worst regret.
The search is coordinate descent over a log grid per constant, until a full sweep
changes nothing, from the current constants and ``--restarts`` random starts. Prints the
current and the fitted constants with their regrets on the same points; it does not edit
the code.

    python3 scripts/fit_cost_model.py benchmarks/results/bench_grid_reduced_cpu1t.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from a2d2c.ops import cost  # noqa: E402
from a2d2c.ops.mixed_conv import exact_impls  # noqa: E402


def _points(paths: list[str]) -> list[dict]:
    groups: dict[tuple, dict] = defaultdict(dict)
    for p in paths:
        with open(p) as f:
            for r in csv.DictReader(f):
                if r["impl"] in ("static", "auto"):
                    continue
                key = (r["case"], r["layer"])
                groups[key]["meta"] = r
                groups[key][r["impl"]] = float(r["median_ms"])
    out = []
    for (_case, layer), g in groups.items():
        meta = g.pop("meta")
        exact = {i: g[i] for i in exact_impls(layer == "odconv") if i in g}
        if len(exact) >= 2:
            out.append(dict(layer=layer, batch=int(meta["batch"]), c=int(meta["channels"]),
                            size=int(meta["size"]), train=meta["mode"] == "train",
                            times=exact))
    return out


def _regrets(points: list[dict], const: dict[str, float]) -> list[float]:
    saved = dict(cost.COST_CONSTANTS["cpu"])
    cost.COST_CONSTANTS["cpu"].update(const)
    try:
        out = []
        for p in points:
            choice = cost.choose_impl(
                batch=p["batch"], in_channels=p["c"], out_channels=p["c"], kernel_size=(3, 3),
                groups=1, output_size=(p["size"], p["size"]), num_kernels=4,
                training=p["train"], device_type="cpu", candidates=tuple(p["times"]),
                descriptor=p["layer"] == "a2d2c")
            out.append(p["times"][choice] / min(p["times"].values()))
        return out
    finally:
        cost.COST_CONSTANTS["cpu"].clear()
        cost.COST_CONSTANTS["cpu"].update(saved)


def _score(regrets: list[float]) -> tuple[float, float]:
    return (sum(math.log(r) for r in regrets) / len(regrets), max(regrets))


def _descend(points: list[dict], grid: dict[str, tuple], start: dict[str, float]
             ) -> tuple[tuple[float, float], dict[str, float]]:
    """Coordinate descent from ``start``: one constant at a time over its grid values."""
    best = (_score(_regrets(points, start)), dict(start))
    changed = True
    while changed:
        changed = False
        for name, values in grid.items():
            now = best[1][name]
            # the best value; among equally good ones the nearest to the current (a flat
            # direction of the score keeps its constant rather than running to an edge)
            scored = sorted((_score(_regrets(points, dict(best[1], **{name: v}))),
                             abs(math.log((v + 1e-3) / (now + 1e-3))), v) for v in values)
            score, _, v = scored[0]
            if score < best[0]:
                best, changed = (score, dict(best[1], **{name: v})), True
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="+")
    parser.add_argument("--restarts", type=int, default=8,
                        help="random starting points besides the current constants")
    args = parser.parse_args()
    points = _points(args.csv)
    if not points:
        raise SystemExit("fit_cost_model: no grid rows with two or more exact paths")
    current = dict(cost.COST_CONSTANTS["cpu"])
    calls = (0.0, 1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7, 1e8, 3e8)
    grid = dict(grouped=(0.4, 0.5, 0.6, 0.8, 1.0, 1.3, 1.6, 2.0, 2.5, 3.0, 4.0),
                unfold=(0.4, 0.5, 0.6, 0.8, 1.0, 1.3, 1.5, 2.0, 2.5, 3.0, 4.0),
                touch=(1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0),
                batch1=(0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0),
                reuse=(0.0, 0.1, 0.25, 0.5, 0.75, 1.0),
                call_kernel=calls, call_unfold=calls, call_plus=calls, call_descriptor=calls)
    rng = random.Random(0)
    starts = [dict(current)] + [
        dict(current, **{n: rng.choice(v) for n, v in grid.items()}) for _ in range(args.restarts)]
    best = (_score(_regrets(points, current)), dict(current))
    for start in starts:
        found = _descend(points, grid, start)
        if found[0] < best[0]:
            best = found
    cur = _regrets(points, current)
    fit = _regrets(points, best[1])
    print(f"{len(points)} (point, layer) pairs")
    for name, const, reg in (("current", current, cur), ("fitted", best[1], fit)):
        srt = sorted(reg)
        print(f"{name:8s} {const}: regret geo-mean {math.exp(_score(reg)[0]):.3f}, median "
              f"{srt[len(srt) // 2]:.3f}, max {srt[-1]:.3f}, share <= 1.15: "
              f"{sum(r <= 1.15 for r in reg) / len(reg):.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
