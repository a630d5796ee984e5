"""The cost model behind ``impl="auto"`` of :func:`a2d2c.ops.mixed_conv2d` and every layer.

Deterministic and cheap (no timing at run time): the same arguments always give the same
choice, so a traced graph and a training run agree with ``describe()``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["COST_CONSTANTS", "choose_impl", "estimate_costs"]

# Per device type. ``grouped``/``unfold``/``dense``: time of a multiply-add in the
# per-sample grouped convolution / the im2col batched GEMM / a dense convolution, relative
# to a dense one; ``touch``: time of one memory-bound element pass (the kernel mix, its
# gradient, im2col, the plus form's mixing), in dense multiply-adds; ``batch1``: the kernel
# and unfold forms' convolution at batch size 1 (a dense conv, but behind the per-sample
# kernel's extra steps). CPU values were fitted to ``a2d2c bench --preset layers`` on 2
# threads (docs/performance.md). CUDA values were fitted to ``a2d2c bench --device cuda
# --dtype bf16 --preset issue6`` on an H200 (2026-11-28, benchmarks/results/): there the
# plus form was the fastest in every case (cuDNN's dense convs are fast, its grouped
# per-sample convs are not), and these constants make ``auto`` choose it wherever exact.
COST_CONSTANTS: dict[str, dict[str, float]] = {
    "cpu": {"dense": 1.0, "grouped": 1.3, "unfold": 1.5, "touch": 16.0, "batch1": 1.0},
    "cuda": {"dense": 1.0, "grouped": 8.0, "unfold": 6.0, "touch": 64.0, "batch1": 8.0},
}


def estimate_costs(*, batch: int | None, in_channels: int, out_channels: int,
                   kernel_size: Sequence[int], groups: int, output_size: Sequence[int],
                   num_kernels: int, training: bool, device_type: str = "cpu"
                   ) -> dict[str, float]:
    """Modelled cost per sample of the three exact CPU/torch paths of a mixed convolution.

    With ``L = H'·W'``, ``m = C/g·kh·kw``, the convolution's ``conv = O·m·L``
    multiply-adds, the per-sample kernel of ``O·m`` values, ``K·O·L`` plus-form feature
    values and ``C·kh·kw·L`` im2col values (constants ``COST_CONSTANTS[device_type]``:
    ``γ_dense, γ_grouped, γ_unfold`` and ``t``, the cost of one memory-bound element pass):

    * ``kernel`` (grouped conv): ``p·γ_grouped·conv + t·K·O·m·(1 or 4 + 2/K)`` — ``p``
      is 1 for inference and 3 for training (forward, input and weight gradients); the
      mix is formed once in inference, and in training formed, re-formed in backward,
      contracted twice with the kernel gradient (``4K`` passes) plus a transpose. At
      ``batch == 1`` the grouped convolution is a dense one (``γ_batch1``).
    * ``unfold`` (im2col + GEMM): as ``kernel`` with ``γ_unfold``, plus ``t·C·kh·kw·L``
      for im2col (three passes in training: im2col, its recomputation, col2im).
    * ``plus``: ``p·γ_dense·K·conv + t·K·O·L·(2 or 6)`` (mixing the K responses; in
      training also their gradient and the saved product).

    ``batch=None`` means "any batch size" (no batch-1 special case), as used while tracing.
    """
    if device_type not in COST_CONSTANTS:
        device_type = "cuda"  # other accelerators: GPU-like balance
    const = COST_CONSTANTS[device_type]
    kh, kw = kernel_size
    length = int(output_size[0]) * int(output_size[1])
    m = in_channels // groups * kh * kw
    conv = out_channels * m * length
    passes = 3.0 if training else 1.0
    mix = const["touch"] * num_kernels * out_channels * m * ((4.0 + 2.0 / num_kernels)
                                                             if training else 1.0)
    gamma_grouped = const["batch1"] if batch == 1 else const["grouped"]
    cols = const["touch"] * in_channels * kh * kw * length * passes
    return {
        "kernel": passes * gamma_grouped * conv + mix,
        "unfold": passes * const["unfold"] * conv + mix + cols,
        "plus": passes * const["dense"] * num_kernels * conv
        + const["touch"] * num_kernels * out_channels * length * (6.0 if training else 2.0),
    }


def choose_impl(*, candidates: Sequence[str] = ("kernel", "unfold", "plus"),
                **shape) -> str:
    """The candidate with the lowest :func:`estimate_costs` (keyword arguments as there)."""
    costs = estimate_costs(**shape)
    return min(candidates, key=costs.__getitem__)
