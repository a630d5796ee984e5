"""Op-level training step (forward + every gradient) of ``mixed_conv2d`` per exact path.

Ratios to a static ``conv2d`` of the same shape, side by side in one process, glibc's
default allocator, medians of 5 interleaved steps (A²D²C-style coefficients ``(B, K, O)``,
K = 4, 3×3, padding 1):

    python3 benchmarks/op_stages.py 2 64x32x32 128x16x32 256x8x32 512x4x32   # THREADS CxSxB...
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from a2d2c.ops.mixed_conv import mixed_conv2d


def measure(c: int, s: int, b: int, k: int = 4) -> str:
    """One line: static ms and every path's ratio for ``C=c``, ``s×s`` maps, batch ``b``."""
    x = torch.randn(b, c, s, s, requires_grad=True)
    w = torch.randn(k, c, c, 3, 3, requires_grad=True)
    a = torch.softmax(torch.randn(b, k, c), 1).requires_grad_()
    ws = torch.randn(c, c, 3, 3, requires_grad=True)

    def step(f) -> None:
        y = f()
        y.backward(torch.ones_like(y))

    fs = {"static": lambda: step(lambda: F.conv2d(x, ws, padding=1))}
    for impl in ("kernel", "unfold", "plus"):
        fs[impl] = lambda impl=impl: step(lambda: mixed_conv2d(x, w, a, padding=1, impl=impl))
    times: dict[str, list[float]] = {n: [] for n in fs}
    for f in fs.values():
        f()
    for _ in range(5):
        for n, f in fs.items():
            t = time.perf_counter()
            f()
            times[n].append(time.perf_counter() - t)
    st = sorted(times["static"])[2]
    return f"{c}ch {s}x{s} b{b}: static {st * 1e3:.1f} ms; " + ", ".join(
        f"{n} {sorted(v)[2] / st:.2f}x" for n, v in times.items() if n != "static")


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    for spec in sys.argv[2:] or ["64x32x32", "128x16x32", "256x8x32", "512x4x32"]:
        c, s, b = (int(v) for v in spec.split("x"))
        print(measure(c, s, b), flush=True)


if __name__ == "__main__":
    main()
