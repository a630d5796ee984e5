"""How well ``impl="auto"``'s cost model chooses on a measured grid.

``a2d2c bench --preset grid`` records, for every point (channels, map size, batch,
training or inference) and layer type, the time of every exact path. The *regret* of a
choice is the time of the chosen path over the fastest measured one. These helpers read
such CSVs and score the model's choices for any set of CPU constants; ``scripts/
fit_cost_model.py`` searches the constants with them and the test suite holds the
committed constants to the committed grid.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..ops import cost
from ..ops.mixed_conv import exact_impls

__all__ = ["load_grid_points", "model_regrets", "summarize"]


def load_grid_points(paths: Iterable[str | Path]) -> list[dict]:
    """One entry per (grid file, point, layer) with two or more exact paths measured:
    several files (grids measured at different times) add up, none replaces another."""
    groups: dict[tuple, dict] = defaultdict(dict)
    for n, p in enumerate(paths):
        with open(p) as f:
            for r in csv.DictReader(f):
                if r["impl"] in ("static", "auto", "tuned"):  # not paths
                    continue
                key = (n, r["case"], r["layer"])
                groups[key]["meta"] = r
                groups[key][r["impl"]] = float(r["median_ms"])
    out = []
    for (_n, case, layer), g in groups.items():
        meta = g.pop("meta")
        exact = {i: g[i] for i in exact_impls(False) if i in g}  # ODConv: plus since 12-04
        if len(exact) >= 2:
            out.append(dict(case=case, layer=layer, batch=int(meta["batch"]),
                            c=int(meta["channels"]), size=int(meta["size"]),
                            train=meta["mode"] == "train", times=exact))
    return out


def model_choice(point: Mapping, constants: Mapping[str, float] | None = None) -> str:
    """The path the CPU model picks for a grid point (3×3, stride 1, K=4, C=O), with
    ``constants`` overriding ``COST_CONSTANTS["cpu"]`` for this call only."""
    saved = dict(cost.COST_CONSTANTS["cpu"])
    cost.COST_CONSTANTS["cpu"].update(constants or {})
    try:
        return cost.choose_impl(
            batch=point["batch"], in_channels=point["c"], out_channels=point["c"],
            kernel_size=(3, 3), groups=1, output_size=(point["size"], point["size"]),
            num_kernels=4, training=point["train"], device_type="cpu",
            candidates=tuple(point["times"]), descriptor=point["layer"] == "a2d2c",
            tap_scaled=point["layer"] == "odconv")
    finally:
        cost.COST_CONSTANTS["cpu"].clear()
        cost.COST_CONSTANTS["cpu"].update(saved)


def model_regrets(points: Iterable[Mapping],
                  constants: Mapping[str, float] | None = None) -> list[float]:
    """The regret of the model's choice at every point."""
    out = []
    for p in points:
        times = p["times"]
        out.append(times[model_choice(p, constants)] / min(times.values()))
    return out


def summarize(regrets: list[float]) -> dict[str, float]:
    """Geometric mean, median, max and the share within 1.15 of a list of regrets."""
    srt = sorted(regrets)
    return dict(geo_mean=math.exp(sum(math.log(r) for r in srt) / len(srt)),
                median=srt[len(srt) // 2], max=srt[-1],
                share_within_1_15=sum(r <= 1.15 for r in srt) / len(srt))
