"""Peak memory of the DCN sampling: ``a2d2c.ops.dcnv3_core`` vs the ``grid_sample`` route.

On CPU there is no allocator peak counter, so each measurement runs in a fresh process
with glibc's trimming and mmap thresholds raised (freed memory stays in the process)
and reads the peak resident set size (``ru_maxrss``) before and after one forward (and
backward) at InternImage-T's stage-1 shape: batch 8, 56×56, 64 channels, 4 groups,
9 points. On CUDA it reads ``torch.cuda.max_memory_allocated`` instead.

    PYTHONPATH=src python3 benchmarks/dcn_memory.py [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = r"""
import resource, sys, time, torch
torch.set_num_threads(1)
from a2d2c.ops import dcnv3_core
from a2d2c.tools.benchmark import naive_dcnv3_core
impl, phase, device = sys.argv[1:4]
f = dcnv3_core if impl == "ours" else naive_dcnv3_core
case = (3, 3, 1, 1, 1, 1, 1, 1, 4, 16, 1.0, False)
g = torch.Generator().manual_seed(0)
v = torch.randn(8, 56, 56, 64, generator=g).to(device).requires_grad_()
off = (0.5 * torch.randn(8, 56, 56, 72, generator=g)).to(device).requires_grad_()
m = torch.randn(8, 56, 56, 36, generator=g).to(device).requires_grad_()
w = torch.randn(8, 56, 56, 64, generator=g).to(device)
small = [t[:1, :4, :4].detach().clone().requires_grad_() for t in (v, off, m)]
f(*small, *case).sum().backward()  # first calls (lazy initialisation) on a tiny input
cuda = device == "cuda"
if cuda:
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
else:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
out = f(v, off, m, *case)
if phase == "train":
    (out * w).sum().backward()
if cuda:
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(f"{impl:6} {phase:6} peak above the inputs {(peak - base) / 2**20:7.1f} MiB "
      f"(output {out.numel() * 4 / 2**20:.1f} MiB), {time.perf_counter() - t0:.2f} s")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="2147483647",
               MALLOC_TRIM_THRESHOLD_="2147483647")
    for impl in ("ours", "naive"):
        for phase in ("infer", "train"):
            subprocess.run([sys.executable, "-c", CHILD, impl, phase, args.device], env=env,
                           check=True)


if __name__ == "__main__":
    main()
