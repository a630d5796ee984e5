"""Does glibc's malloc setting help? Minor page faults and time per training step.

Runs one A²D²C (kernel form) and one static training step loop in fresh subprocesses
under: glibc defaults; the environment variables set before start; ``mallopt`` at
start-up (what the ``a2d2c`` command does, :func:`a2d2c.allocator.tune_allocator`).
Page faults are a deterministic measure of the allocator's effect (each is a page the
kernel zeroes again); times are medians of interleaved steps.

    PYTHONPATH=src python3 benchmarks/allocator.py [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, statistics, sys, time
mode, threads = sys.argv[1], int(sys.argv[2])
if mode == "mallopt":
    from a2d2c.allocator import tune_allocator
    assert tune_allocator()
import torch
import a2d2c
torch.set_num_threads(threads)
torch.manual_seed(0)
out = {}
for b, c, s in ((32, 128, 16), (32, 512, 4)):
    x = torch.randn(b, c, s, s, requires_grad=True)
    layers = {"static": torch.nn.Conv2d(c, c, 3, padding=1),
              "a2d2c": a2d2c.A2D2Conv2d(c, c, 3, padding=1, impl="kernel")}
    def step(m):
        x.grad = None
        m(x).square().mean().backward()
    for m in layers.values():
        step(m)
    times = {k: [] for k in layers}
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        for k, m in layers.items():
            t = time.perf_counter(); step(m); times[k].append(time.perf_counter() - t)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 5
    for k in layers:
        out[f"{c}ch_{s}x{s}_{k}_ms"] = round(statistics.median(times[k]) * 1e3, 1)
    out[f"{c}ch_{s}x{s}_faults_per_step"] = round(faults)
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from a2d2c.allocator import ENV_VARS

    base = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    settings = {"default": (base, "default"), "env": ({**base, **ENV_VARS}, "env"),
                "mallopt": (base, "mallopt")}
    for name, (env, mode) in settings.items():
        res = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.threads)], env=env,
                             capture_output=True, text=True, check=True)
        print(name, json.loads(res.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
