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
import math
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from a2d2c.ops import cost  # noqa: E402
from a2d2c.tools.grid_fit import load_grid_points, model_choice, model_regrets, summarize  # noqa: E402


def _regrets(points: list[dict], const: dict[str, float]) -> list[float]:
    return model_regrets(points, const)


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
    parser.add_argument("--worst", type=int, default=0,
                        help="also list the N worst choices of the current constants")
    parser.add_argument("--no-fit", action="store_true",
                        help="only score the current constants")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="score (and start from) these constants instead of the code's")
    args = parser.parse_args()
    points = load_grid_points(args.csv)
    if not points:
        raise SystemExit("fit_cost_model: no grid rows with two or more exact paths")
    current = dict(cost.COST_CONSTANTS["cpu"])
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in current:
            raise SystemExit(f"fit_cost_model: unknown constant {name!r}; one of {sorted(current)}")
        current[name] = float(value)
    cur = _regrets(points, current)
    print(f"{len(points)} (point, layer) pairs")
    _report("current", current, cur)
    if args.worst:
        ranked = sorted(zip(cur, points, strict=True), key=lambda t: -t[0])[:args.worst]
        for r, p in ranked:
            times = " ".join(f"{k}={v:.3g}" for k, v in p["times"].items())
            print(f"  {r:5.2f} {p['case']:26s} {p['layer']:12s} chose "
                  f"{model_choice(p, current):6s} {times}")
    if args.no_fit:
        return 0
    calls = (0.0, 1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7, 1e8, 3e8)
    grid = dict(grouped=(0.4, 0.5, 0.6, 0.8, 1.0, 1.3, 1.6, 2.0, 2.5, 3.0, 4.0),
                unfold=(0.4, 0.5, 0.6, 0.8, 1.0, 1.3, 1.5, 2.0, 2.5, 3.0, 4.0),
                touch=(1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0),
                batch1=(0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0),
                reuse=(0.0, 0.1, 0.25, 0.5, 0.75, 1.0),
                reuse_blocked=(0.0, 0.1, 0.25, 0.5, 0.75, 1.0),
                tap_gemm=(0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.5, 2.0),
                call_kernel=calls, call_unfold=calls, call_plus=calls, call_descriptor=calls)
    rng = random.Random(0)
    starts = [dict(current)] + [
        dict(current, **{n: rng.choice(v) for n, v in grid.items()}) for _ in range(args.restarts)]
    best = (_score(_regrets(points, current)), dict(current))
    for start in starts:
        found = _descend(points, grid, start)
        if found[0] < best[0]:
            best = found
    _report("fitted", best[1], _regrets(points, best[1]))
    return 0


def _report(name: str, const: dict[str, float], regrets: list[float]) -> None:
    s = summarize(regrets)
    print(f"{name:8s} {const}: regret geo-mean {s['geo_mean']:.3f}, median {s['median']:.3f}, "
          f"max {s['max']:.3f}, share <= 1.15: {s['share_within_1_15']:.0%}")


if __name__ == "__main__":
    raise SystemExit(main())
