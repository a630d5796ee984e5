"""``a2d2c bench``: speed and memory of static, A²D²C and the baselines, side by side.

Thin over :mod:`a2d2c.tools.benchmark`. Examples::

    a2d2c bench --preset issue6 --threads 2            # the issue's table on CPU
    a2d2c bench --device cuda --dtype bf16 --preset issue6
    a2d2c bench --preset layers --variants 'a2d2c:*'   # the cost model's calibration
    a2d2c bench --preset grid --threads 2 --repeats 3  # every path + auto's regret
    a2d2c bench --preset issue6 --compile              # every variant under torch.compile
"""

from __future__ import annotations

import argparse

import torch

from ..tools.benchmark import GRIDS, PRESETS, run_benchmark, run_grid


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="issue6", choices=sorted(PRESETS),
                        help="which cases to run (default: issue6, the issue's target table)")
    parser.add_argument("--cases", nargs="+", metavar="NAME",
                        help="run only these cases of the preset")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="fp32, or bf16/fp16 autocast (default: fp32)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="model and input in channels_last (default: on for CUDA)")
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed steps per variant, interleaved; medians reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--variants", nargs="+", metavar="PATTERN",
                        help="shell patterns on variant labels, e.g. 'a2d2c:*' odconv "
                             "(static is always run)")
    parser.add_argument("--grid", default="reduced", choices=sorted(GRIDS),
                        help="with --preset grid: which grid (default: reduced, sized for a "
                             "CPU; full: channels 8-512, maps 4-112, batch 1-256; "
                             "stages: the layers of the CPU training targets)")
    parser.add_argument("--compile", nargs="?", const="inductor", default=None,
                        metavar="BACKEND",
                        help="run every variant under torch.compile (backend: default "
                             "inductor); the untimed warm-up steps (at least 2) compile")
    parser.add_argument("--out", default="benchmarks/results",
                        help="directory of the CSV (default: benchmarks/results); '' for none")


def main(args: argparse.Namespace) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.preset == "grid":
        if args.compile is not None:
            raise ValueError("--compile is not supported with --preset grid (the grid times "
                             "each path of the op eagerly); use another preset")
        run_grid(grid=args.grid, device=args.device, repeats=args.repeats,
                 warmup=args.warmup, out_dir=args.out or None)  # errors: the one error path
        return 0
    cases = PRESETS[args.preset]
    if args.cases:
        unknown = sorted(set(args.cases) - {c.name for c in cases})
        if unknown:
            raise ValueError(f"unknown case(s) {unknown} in preset "
                             f"{args.preset!r}; choose from {[c.name for c in cases]}")
        cases = [c for c in cases if c.name in args.cases]
    # errors (ValueError) go to the CLI's one error path: one line, exit 2
    run_benchmark(cases, device=args.device, dtype=args.dtype,
                  channels_last=args.channels_last, repeats=args.repeats,
                  warmup=args.warmup, variants=args.variants, out_dir=args.out or None,
                  preset=args.preset, compile_backend=args.compile)
    return 0
