"""The cost model behind ``impl="auto"`` of :func:`a2d2c.ops.mixed_conv2d` and every layer.

Deterministic and cheap (no timing at run time): the same arguments always give the same
choice, so a traced graph and a training run agree with ``describe()``. Measuring instead
(like ``cudnn.benchmark``) is opt-in: :mod:`a2d2c.ops.tuning`.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["COST_CONSTANTS", "choose_impl", "estimate_costs"]

# Per device type. ``grouped``/``unfold``/``dense``: time of a multiply-add in the
# per-sample grouped convolution / the im2col batched GEMM / a dense convolution, relative
# to a dense one; ``touch``: time of one memory-bound element pass (the kernel mix, its
# gradient, im2col, the plus form's mixing), in dense multiply-adds; ``batch1``: the kernel
# and unfold forms' convolution at batch size 1 (a dense conv, but behind the per-sample
# kernel's extra steps); ``reuse``: the share of the kernel mix that is paid again by every
# sample — the rest (reading the K base kernels) is paid once per group of samples mixed
# together (a batch chunk on CPU, the whole batch on CUDA); ``reuse_blocked``: the same
# share where the CPU unfold path runs output-channel blocks (each block mixed for the
# whole batch while its base kernels are in cache); ``call_kernel``/``call_unfold``/
# ``call_plus``: each path's fixed cost per call (its launches, in dense multiply-adds;
# doubled in training), spread over the batch;
# ``call_descriptor``: the same for A²D²C's attention descriptor, which the kernel and
# unfold paths compute from the input (patch means, then the K base kernels) and the plus
# form reads off its K responses; ``tap_gemm``: a multiply-add of the plus form's GEMM over
# the whole batch's im2col columns (ODConv's tap-scaled plus form), relative to a dense
# convolution's.
# CPU values: fitted with ``scripts/fit_cost_model.py`` to a reduced grid (1 thread, quiet
# machine, 2026-12-02) and kept as the simplest set within the noise of the best fit; on a
# fresh grid of the final code (``benchmarks/results/bench_grid_reduced_cpu1t.csv``,
# 2026-12-03) their choices have a geometric-mean regret of 1.015, max 1.50 (the earlier
# constants: 1.035, max 2.09). ``reuse_blocked`` 0.5 holds on that grid and on the
# 2-thread grids of a faster host (``bench_grid_reduced_cpu2t.csv``: 1.011, max 1.78;
# ``bench_grid_stages_cpu2t.csv``, the CPU targets' layers: 1.002, max 1.07), where 0
# put CIFAR ResNet-18's last stages on the blocked unfold path, 1.6-1.9x slower than plus
# there. docs/performance.md, "The refit" and "The 2-thread grids". ``tap_gemm`` 0.7
# (2026-12-06; before, the per-sample ``unfold`` 1.5): on the CPU targets' layers measured
# on an Intel host (``bench_grid_stages_cpu2t_2026-12-06_intel.csv``) it takes ODConv's
# plus form at 256 ch 8², 2.2x faster there than the kernel form (max regret 2.24 -> 1.16;
# that host's reduced grid, ``bench_grid_reduced_cpu2t_2026-12-06_intel.csv``: 1.006, max
# 1.62, with 1.5 max 2.53);
# any value in 0.6-0.8 leaves the regrets of the three AMD/earlier grids as they were
# (0.5 and below do not).
# CUDA values were fitted to ``a2d2c bench --device cuda --dtype bf16 --preset issue6``
# on an H200 (2026-11-28, benchmarks/results/): there the plus form was the fastest in
# every case (cuDNN's dense convs are fast, its grouped per-sample convs are not), and
# these constants make ``auto`` choose it wherever exact.
COST_CONSTANTS: dict[str, dict[str, float]] = {
    "cpu": {"dense": 1.0, "grouped": 1.3, "unfold": 1.5, "touch": 32.0, "batch1": 1.0,
            "reuse": 0.75, "reuse_blocked": 0.5, "call_kernel": 3e6, "call_unfold": 3e6,
            "call_plus": 0.0, "call_descriptor": 3e7, "tap_gemm": 0.7},
    "cuda": {"dense": 1.0, "grouped": 8.0, "unfold": 6.0, "touch": 64.0, "batch1": 8.0,
             "reuse": 1.0, "reuse_blocked": 1.0, "call_kernel": 0.0, "call_unfold": 0.0,
             "call_plus": 0.0, "call_descriptor": 0.0, "tap_gemm": 6.0},
}

#: Bytes per element the CPU chunk and block plans are modelled with (fp32).
_ELEM_BYTES = 4


def estimate_costs(*, batch: int | None, in_channels: int, out_channels: int,
                   kernel_size: Sequence[int], groups: int, output_size: Sequence[int],
                   num_kernels: int, training: bool, device_type: str = "cpu",
                   descriptor: bool = False, tap_scaled: bool = False) -> dict[str, float]:
    """Modelled cost per sample of the three exact CPU/torch paths of a mixed convolution.

    With ``L = H'·W'``, ``m = C/g·kh·kw``, the convolution's ``conv = O·m·L``
    multiply-adds, the per-sample kernel of ``O·m`` values, ``K·O·L`` plus-form feature
    values and ``C·kh·kw·L`` im2col values (constants ``COST_CONSTANTS[device_type]``:
    ``γ_dense, γ_grouped, γ_unfold``, ``t``, the cost of one memory-bound element pass,
    ``ρ`` (``reuse``) and the fixed costs per call ``F_path``):

    * ``kernel`` (grouped conv): ``p·γ_grouped·conv + mix + f·F_kernel/B`` — ``p`` is 1
      for inference and 3 for training (forward, input and weight gradients), ``f`` 1 or
      2. ``mix = t·K·O·m·q·(ρ + (1-ρ)/n)``: ``q = 1`` in inference (formed once), and in
      training ``4 + 2/K`` (formed, re-formed in backward, contracted twice with the kernel
      gradient, a transpose); ``n`` samples share one read of the base kernels (the batch
      chunk on CPU, see :func:`a2d2c.ops.mixed_conv.chunk_samples`; the batch on CUDA). At
      ``batch == 1`` the grouped convolution is a dense one (``γ_batch1``).
    * ``unfold`` (im2col + GEMM): as ``kernel`` with ``γ_unfold``, plus ``t·C·kh·kw·L``
      for im2col (three passes in training: im2col, its recomputation, col2im). Where the
      CPU path runs in output-channel blocks (:func:`a2d2c.ops.mixed_conv.block_channels`)
      ``n`` is the batch, ``ρ`` is ``reuse_blocked``, and every further block reads the
      columns again (``p`` passes).
    * ``plus``: ``p·γ_dense·K·conv + t·K·O·L·(2 or 6) + f·F_plus/B`` (mixing the K
      responses; in training also their gradient and the saved product).

    ``descriptor=True`` (A²D²C) adds to ``kernel`` and ``unfold`` the attention descriptor
    they compute from the input: ``p·t·C·kh·L`` (the patch means: ``kh`` strided row sums)
    plus ``p·K·O·m`` (their product with the base kernels, a GEMM) plus ``f·F_descriptor/B``.

    ``tap_scaled=True`` (ODConv's factored spatial attention, ``tap_scale`` of the op):
    the plus form runs on per-tap scaled im2col columns, one GEMM per group over the whole
    batch's columns, so it is priced ``p·γ_tap_gemm·K·conv``, plus the im2col passes of
    the unfold path and the same mixing.

    ``batch=None`` means "any batch size" (no batch-1 case, no fixed cost, no blocks), as
    used while tracing.
    """
    from .mixed_conv import block_channels, chunk_samples  # the op's own CPU plans

    if device_type not in COST_CONSTANTS:
        device_type = "cuda"  # other accelerators: GPU-like balance
    const = COST_CONSTANTS[device_type]
    k, o = num_kernels, out_channels
    kh, kw = kernel_size
    length = int(output_size[0]) * int(output_size[1])
    m = in_channels // groups * kh * kw
    conv = o * m * length
    passes = 3.0 if training else 1.0
    calls = (2.0 if training else 1.0) / batch if batch else 0.0
    big = batch if batch else 1 << 30  # "any batch size": as for a large batch
    if device_type == "cpu":
        n_chunk = chunk_samples(big, o * m * _ELEM_BYTES)
        per_block = None if (groups != 1 or not batch) else block_channels(
            batch, k, o, m, length, _ELEM_BYTES)
    else:
        n_chunk, per_block = big, None
    rho = const["reuse"]

    def mix(n: int, rho: float = rho) -> float:
        q = (4.0 + 2.0 / k) if training else 1.0
        return const["touch"] * k * o * m * q * (rho + (1.0 - rho) / n)

    gamma_grouped = const["batch1"] if batch == 1 else const["grouped"]
    cols = const["touch"] * in_channels * kh * kw * length * passes
    if per_block is None:
        unfold_mix = mix(n_chunk)
    else:
        # every further block reads the columns again
        unfold_mix = mix(big, const["reuse_blocked"]) + cols * (-(-o // per_block) - 1)
    desc = 0.0
    if descriptor:
        desc = (const["touch"] * in_channels * kh * length * passes  # kh strided row sums
                + passes * k * o * m + calls * const["call_descriptor"])
    return {
        "kernel": passes * gamma_grouped * conv + mix(n_chunk) + desc
        + calls * const["call_kernel"],
        "unfold": passes * const["unfold"] * conv + unfold_mix + cols + desc
        + calls * const["call_unfold"],
        "plus": passes * const["tap_gemm" if tap_scaled else "dense"] * k * conv
        + (cols if tap_scaled else 0.0)
        + const["touch"] * k * o * length * (6.0 if training else 2.0)
        + calls * const["call_plus"],
    }


def choose_impl(*, candidates: Sequence[str] = ("kernel", "unfold", "plus"),
                **shape) -> str:
    """The candidate with the lowest :func:`estimate_costs` (keyword arguments as there)."""
    costs = estimate_costs(**shape)
    return min(candidates, key=costs.__getitem__)
