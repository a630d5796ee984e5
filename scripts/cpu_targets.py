"""Issue 15's CPU targets, measured the way a library user runs: a plain Python script.

No allocator tuning (glibc's defaults: this script never calls
``a2d2c.allocator.tune_allocator``), threads set explicitly, static and A²D²C (``auto``)
side by side in one process, interleaved; by default also ``a2d2c:tuned`` (``auto`` with
measured choice, :mod:`a2d2c.ops.tuning`, measured in the warm-up step). The whole set
is run ``--rounds`` times; each round records the machine's 1-minute load average before
it starts, and the medians per round and over rounds are written to a CSV.

    python3 scripts/cpu_targets.py --threads 2 --rounds 3 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from a2d2c.allocator import allocator_state  # noqa: E402
from a2d2c.tools.benchmark import Case, run_benchmark  # noqa: E402

CASES = [
    Case("cifar_resnet18_b32_train", "model", "train", 32, 3, 32, stem="cifar",
         num_classes=10, target=2.0),
    Case("smallnet_w8-64_b128_28x28_train", "model", "train", 128, 1, 28, stem="cifar",
         num_classes=10, width_mult=0.125, target=1.5),
    Case("resnet18_224_b1_infer", "model", "infer", 1, 3, 224, target=1.4),
]


def _load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["a2d2c:auto", "a2d2c:tuned"])
    parser.add_argument("--cases", nargs="+", default=None)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [c for c in CASES if args.cases is None or c.name in args.cases]
    out = Path(args.out) / f"cpu_targets_{args.threads}t.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for rnd in range(args.rounds):
        for case in cases:
            load = _load1()
            got, _ = run_benchmark([case], repeats=args.repeats, warmup=1,
                                   variants=args.variants, log=lambda s: None)
            for r in got:
                rows.append(dict(round=rnd, case=case.name, variant=r["variant"],
                                 median_ms=round(r["median_ms"], 2),
                                 ratio=round(r["ratio"], 3), target=case.target,
                                 resolved=r["resolved"], load1_before=load,
                                 threads=args.threads, allocator=allocator_state(),
                                 torch=torch.__version__))
                print(f"round {rnd} {case.name} {r['variant']}: {r['median_ms']:.1f} ms "
                      f"{r['ratio']:.2f}x (load {load:.1f}) {r['resolved']}", flush=True)
            with out.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    print("median ratio over rounds:")
    for case in cases:
        for v in args.variants:
            ratios = [r["ratio"] for r in rows if r["case"] == case.name and r["variant"] == v]
            if ratios:
                print(f"  {case.name} {v}: {statistics.median(ratios):.2f}x "
                      f"(rounds {', '.join(f'{x:.2f}' for x in ratios)}; target "
                      f"<= {case.target}x)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
