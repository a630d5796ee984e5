"""A²D²C: Adaptive Attention-Driven Dynamic Convolution (and its ``+`` form).

The semantics are fixed by ``SPEC.md`` §1. In short, with ``K`` base kernels ``W_k``:

* base responses ``F_k = conv(x, W_k) + b_k``;
* for each of ``N`` draws, ``M`` output positions ``S`` are sampled and
  ``p̄[b, n, k, o] = mean_{s ∈ S} F_k[b, o, s]`` is the local descriptor;
* a head (``direct``: identity, ``mlp``: a bottleneck shared by the K kernels) maps
  ``p̄`` to logits ``z`` and ``π[b, k, o] = mean_n softmax_k(z / τ)``;
* the output is ``conv(x, Σ_k π_k ⊙ W_k) + Σ_k π_k ⊙ b_k``.

Attention variants (an amendment to SPEC §1, issue 16; the defaults are the paper's
reading). Measured on trained models, the paper's ``softmax_k(p̄ / τ)`` is almost uniform
(the raw means are small next to ``τ = 1``), so two options test that cause:

* ``descriptor="standardized"``: ``p̄`` is standardised over the K kernels for every
  (sample, draw, output channel), ``(p̄ − mean_k p̄) / sqrt(var_k p̄ + ε)``, before the
  head: the logits are then O(1) whatever the scale of the features. No parameters.
* ``logit_scale="layer"`` | ``"channel"``: the head's logits are multiplied by a
  learnable ``s = exp(θ)`` (one per layer, or one per output channel), ``θ`` initialised
  to 0, so training starts at the paper's reading and weight decay pulls back to it
  (never towards uniform attention). 1 or ``O`` extra parameters per layer.

In full: ``z = s · head(norm(p̄))`` and ``π = mean_n softmax_k(z / τ)``.

Two exact computations of that one function are implemented (the paper's Eq. 8):

``"kernel"`` (A²D²C, Eq. 6–7)
    Aggregates one kernel per sample and runs a grouped convolution over the batch.
    The K full feature maps are never computed: ``p̄`` is linear in the input,
    ``p̄ = W_k · mean_{s ∈ S} patch(x, s) + b_k``, so only the ``M`` sampled input
    patches are gathered. Costs one convolution plus a tiny attention.
``"plus"`` (A²D²C+, Eq. 8)
    Runs all K convolutions as one dense convolution with ``K·O`` output channels and
    mixes the K responses with ``π``. Costs K convolutions, but dense ones.

Both give the same output and the same gradients (to float tolerance; the tests check
both against a per-sample loop). ``impl="auto"`` chooses per call, see
:meth:`A2D2Conv2d.resolve_impl`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import tuning
from ..ops.cost import COST_CONSTANTS, estimate_costs
from ..ops.mixed_conv import (
    TRITON_IMPLS,
    _functorch_active,
    _is_tracing,
    _opaque_under_compile,
    exact_impls,
    mix_responses,
    mixed_conv2d,
    plus_method,
    plus_responses,
    triton_available,
)
from ._base import TemperatureMixin, check_choice, check_positive_int
from ._dynamic_functional import DynamicConvBase, check_ratio

__all__ = ["COST_CONSTANTS", "DESCRIPTORS", "HEADS", "IMPLS", "LOGIT_SCALES", "SAMPLINGS",
           "A2D2Conv2d", "estimate_costs"]

SAMPLINGS = ("random", "fixed", "global")
EVAL_SAMPLINGS = ("global", "fixed")
HEADS = ("direct", "mlp")
#: ``descriptor``: the paper's raw means, or standardised over the K kernels (issue 16)
DESCRIPTORS = ("raw", "standardized")
#: ``logit_scale``: none (the paper), one learnable scale per layer, or per output channel
LOGIT_SCALES = ("none", "layer", "channel")
#: ε of the standardised descriptor's variance (float32-safe, tiny next to a trained p̄'s)
STANDARDIZE_EPS = 1e-6
IMPLS = ("auto", "kernel", "unfold", "plus", "triton", "triton_plus")


class A2D2Conv2d(TemperatureMixin, DynamicConvBase):
    """Adaptive Attention-Driven Dynamic Convolution, a drop-in for :class:`nn.Conv2d`.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
        padding_mode: as in :class:`torch.nn.Conv2d`.
        num_kernels: ``K``, the number of base kernels.
        num_points: ``M``, output positions sampled per draw (all positions when
            ``M ≥ H'·W'``).
        num_draws: ``N``, independent point sets; their softmaxes are averaged.
        sampling: ``"random"`` (fresh positions for every sample, draw and pass),
            ``"fixed"`` (one seeded set per output size) or ``"global"`` (all positions).
        eval_sampling: what ``"random"`` becomes in ``eval()``: ``"global"`` or
            ``"fixed"``; inference is deterministic.
        head: ``"direct"`` (``z = p̄``, parameter-free) or ``"mlp"`` (a bottleneck
            ``O → h → O`` shared by the K kernels, ``h = max(round(r·O), 16)``).
        reduction: ``r`` of the ``"mlp"`` head.
        descriptor: ``"raw"`` (the paper: ``p̄`` as it is) or ``"standardized"``
            (standardised over the K kernels per sample, draw and output channel).
        logit_scale: ``"none"`` (the paper), ``"layer"`` (one learnable scale ``exp(θ)``
            of the logits, 1 parameter) or ``"channel"`` (one per output channel, ``O``
            parameters); ``θ`` starts at 0.
        temperature: initial softmax temperature ``τ`` (a buffer; see
            :class:`a2d2c.TemperatureScheduler`).
        impl: ``"kernel"`` (A²D²C), ``"unfold"`` (the same, by im2col + GEMM),
            ``"plus"`` (A²D²C+), ``"triton"`` (the kernel form as fused Triton kernels,
            CUDA only; see :func:`a2d2c.ops.mixed_conv2d`), ``"triton_plus"`` (the
            descriptor of the kernel form, then the convolution as the op's fused Triton
            plus form: K dense contractions mixed in registers, CUDA only) or ``"auto"``.
        fixed_seed: seed of the ``"fixed"`` point sets (the same in every process).

    Shape:
        input ``(B, C, H, W)``, output ``(B, O, H', W')`` as for ``nn.Conv2d``.
        ``forward(x, points=idx)`` takes explicit flattened output positions, a
        LongTensor of shape ``(N, M)`` (shared by the batch) or ``(B, N, M)``.

    Attributes:
        weight: ``(K, O, C/groups, kh, kw)``, the base kernels.
        bias: ``(K, O)`` or ``None``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        num_kernels: int = 4,
        num_points: int = 100,
        num_draws: int = 1,
        sampling: str = "random",
        eval_sampling: str = "global",
        head: str = "direct",
        reduction: float = 0.0625,
        descriptor: str = "raw",
        logit_scale: str = "none",
        temperature: float = 1.0,
        impl: str = "auto",
        fixed_seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._init_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation,
                            groups, padding_mode)
        check_positive_int(num_kernels, "num_kernels", "K")  # first, as every K layer does
        self.num_points = check_positive_int(num_points, "num_points", "M")
        self.num_draws = check_positive_int(num_draws, "num_draws", "N")
        self.sampling = check_choice(sampling, "sampling", SAMPLINGS)
        self.eval_sampling = check_choice(eval_sampling, "eval_sampling", EVAL_SAMPLINGS)
        self.head = check_choice(head, "head", HEADS)
        self.descriptor = check_choice(descriptor, "descriptor", DESCRIPTORS)
        self.logit_scale = check_choice(logit_scale, "logit_scale", LOGIT_SCALES)
        self.impl = check_choice(impl, "impl", IMPLS)
        self.reduction = check_ratio(reduction, "reduction", "r")
        if isinstance(fixed_seed, bool) or not isinstance(fixed_seed, int):
            raise TypeError(f"fixed_seed must be an int, got {fixed_seed!r}")
        self.fixed_seed = fixed_seed
        self._init_temperature(temperature, device)

        factory = {"device": device, "dtype": dtype}
        self._init_kernel_bank(num_kernels, bias, factory)
        if head == "mlp":
            self.hidden_channels = max(round(self.reduction * out_channels), 16)
            self.fc1 = nn.Linear(out_channels, self.hidden_channels, **factory)
            self.fc2 = nn.Linear(self.hidden_channels, out_channels, **factory)
        else:
            self.hidden_channels = 0
            self.fc1 = self.fc2 = None
        if logit_scale == "none":
            self.log_scale = None
        else:  # θ of s = exp(θ); shape () per layer, (O,) per output channel
            shape = () if logit_scale == "layer" else (out_channels,)
            self.log_scale = nn.Parameter(torch.zeros(shape, **factory))
        self._fixed_points: dict[tuple[int, int, str], Tensor] = {}
        self.reset_parameters()

    # ------------------------------------------------------------------ parameters
    def reset_parameters(self) -> None:
        """Initialise every base kernel independently, exactly like ``nn.Conv2d``."""
        for k in range(self.num_kernels):
            # nn.Conv2d.reset_parameters: kaiming_uniform_(a=√5), bias U(±1/√fan_in).
            nn.init.kaiming_uniform_(self.weight[k], a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].shape[1] * self.weight.shape[3] * self.weight.shape[4]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)
        if self.fc1 is not None:
            self.fc1.reset_parameters()
            self.fc2.reset_parameters()
        if self.log_scale is not None:
            nn.init.zeros_(self.log_scale)  # s = 1: the paper's reading at the start

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, *, noise: float = 1e-2, **kwargs) -> A2D2Conv2d:
        """Build a layer whose K base kernels are copies of a trained ``nn.Conv2d``.

        ``W_k = W + ε_k`` with ``ε_k ~ N(0, (noise·std(W))²)`` re-centred so that
        ``Σ_k ε_k = 0``: with uniform attention the converted layer is *exactly* the
        original (the mean kernel is ``W``), and its deviation is second order in the
        attention's departure from uniform. The noise breaks the symmetry between
        kernels: identical ``W_k`` get identical logits and gradients forever.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_conv2d expects an nn.Conv2d, got {type(conv).__name__}")
        if not noise >= 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        if isinstance(conv.padding, str):
            padding: int | Sequence[int] | str = conv.padding
        else:
            padding = conv.padding
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype, **kwargs)
        from .transfer import init_from_static  # the one transfer rule of every conv type

        return init_from_static(layer, conv.weight, conv.bias, noise=noise)

    def extra_repr(self) -> str:
        s = self._geometry_repr(self.bias is not None)
        s += (f", K={self.num_kernels}, M={self.num_points}, N={self.num_draws}, "
              f"sampling={self.sampling}, eval_sampling={self.eval_sampling}, head={self.head}")
        if self.head == "mlp":
            s += f", hidden={self.hidden_channels}"
        if self.descriptor != "raw":
            s += f", descriptor={self.descriptor}"
        if self.logit_scale != "none":
            s += f", logit_scale={self.logit_scale}"
        s += f", impl={self.impl}, temperature={float(self.temperature):g}"
        return s

    # ------------------------------------------------------------------ dispatch
    def resolve_impl(self, input_shape: Sequence[int], *, training: bool | None = None,
                     device: torch.device | str | None = None, tracing: bool = False) -> str:
        """The computation (``"kernel"``, ``"unfold"`` or ``"plus"``) used for an input.

        An explicit ``impl`` is returned as is. ``impl="auto"`` takes the exact form with
        the lowest :func:`estimate_costs` for this shape, device and mode: ``training``
        (gradients flow; default: the module's ``training`` flag) or inference.
        ``tracing=True`` (inside ``torch.compile`` or ONNX export, set by ``forward``)
        excludes the grouped ``"kernel"`` method, whose number of groups is the batch
        size, so that one traced graph serves every batch size. With benchmarking on
        (:func:`a2d2c.ops.tuning.set_benchmark`) ``forward`` runs the measured fastest
        form instead (``tuning.cache_info()``); this returns the model's.
        """
        if self.impl != "auto":
            return self.impl
        costs = self.estimate_costs(input_shape, training=training, device=device,
                                    tracing=tracing)
        return min(costs, key=costs.__getitem__)

    def estimate_costs(self, input_shape: Sequence[int], *, training: bool | None = None,
                       device: torch.device | str | None = None,
                       tracing: bool = False) -> dict[str, float]:
        """Modelled cost of each exact form, in dense multiply-add equivalents per sample.

        See :func:`estimate_costs`; ``"kernel"`` is left out when ``tracing``.
        """
        # int() only on C, H, W: the batch size stays symbolic while tracing.
        _b, c, h, w = input_shape[0], int(input_shape[1]), int(input_shape[2]), int(input_shape[3])
        ho, wo = self.geometry.output_size(h, w)
        if training is None:
            training = self.training
        dev = torch.device(device) if device is not None else self.weight.device
        costs = estimate_costs(
            batch=None if tracing else int(_b), in_channels=c, out_channels=self.out_channels,
            kernel_size=self.kernel_size, groups=self.groups, output_size=(ho, wo),
            num_kernels=self.num_kernels, training=training, device_type=dev.type,
            descriptor=True)
        if tracing:
            del costs["kernel"]
        return costs

    def describe(self, input_shape: Sequence[int], *, training: bool | None = None,
                 device: torch.device | str | None = None) -> str:
        """One line saying what a forward pass on ``input_shape`` computes and how.

        With ``impl="auto"`` it lists the modelled cost of every candidate (see
        :meth:`estimate_costs`), so the choice can be checked against ``a2d2c bench``.
        """
        _b, _, h, w = input_shape
        ho, wo = self.geometry.output_size(int(h), int(w))
        if training is None:
            training = self.training
        mode = self._sampling_mode()
        m = min(self.num_points, ho * wo) if mode != "global" else ho * wo
        impl = self.resolve_impl(input_shape, training=training, device=device)
        line = (f"A2D2Conv2d {self.in_channels}->{self.out_channels} on {tuple(input_shape)} "
                f"({'training' if training else 'inference'}): impl={impl} "
                f"(requested {self.impl}")
        if self.impl == "auto":
            costs = self.estimate_costs(input_shape, training=training, device=device)
            line += "; modelled cost per sample " + ", ".join(
                f"{name} {cost / 1e6:.3g}M" for name, cost in sorted(costs.items(),
                                                                     key=lambda kv: kv[1]))
        return (line + f"), sampling={mode} with {m}/{ho * wo} positions x {self.num_draws} "
                f"draws, K={self.num_kernels}, head={self.head}, "
                f"tau={float(self.temperature):g}")

    # ------------------------------------------------------------------ sampling
    def _sampling_mode(self) -> str:
        if self.sampling == "random" and not self.training:
            return self.eval_sampling
        return self.sampling

    def _fixed(self, ho: int, wo: int, device: torch.device) -> Tensor:
        key = (ho, wo, str(device))
        pts = self._fixed_points.get(key)
        if pts is None:
            # Python's Mersenne Twister seeded from (seed, output size) gives the same sets
            # in every process and on every device, and is a constant to graph capture
            # (ONNX export, torch.compile), unlike a torch.Generator.
            rng = random.Random(self.fixed_seed * 1_000_003 + ho * 10_007 + wo)
            pts = torch.tensor([rng.sample(range(ho * wo), min(self.num_points, ho * wo))
                                for _ in range(self.num_draws)], dtype=torch.long,
                               device=device)
            if not _is_tracing():  # never cache a traced (fake) tensor
                self._fixed_points[key] = pts
        return pts

    def sample_points(self, batch_size: int, output_size: Sequence[int],
                      device: torch.device | str | None = None) -> Tensor | None:
        """The positions a forward pass in the current mode would use.

        Returns a LongTensor ``(B, N, M)`` of flattened output positions, or ``None`` when
        every position is used (``global`` sampling, or ``M ≥ H'·W'``). ``random`` draws
        from torch's global RNG exactly as :meth:`forward` does, so re-seeding and calling
        ``forward(x, points=layer.sample_points(...))`` reproduces a training pass.
        """
        ho, wo = (int(v) for v in output_size)
        length = ho * wo
        device = torch.device("cpu") if device is None else torch.device(device)
        mode = self._sampling_mode()
        if mode == "global" or self.num_points >= length:
            return None
        if mode == "fixed":
            return self._fixed(ho, wo, device).unsqueeze(0).expand(batch_size, -1, -1)
        # Uniform without replacement: the M largest of L i.i.d. uniforms are a uniformly
        # random M-subset, drawn for every (sample, draw) at once.
        noise = torch.rand(batch_size, self.num_draws, length, device=device)
        return noise.topk(self.num_points, dim=-1, sorted=False).indices

    def _check_points(self, points: Tensor, batch: int, ho: int, wo: int) -> Tensor:
        if not isinstance(points, Tensor) or points.dtype not in (torch.int64, torch.int32):
            got = points.dtype if isinstance(points, Tensor) else type(points).__name__
            raise TypeError(f"points must be an integer tensor (torch.long), got {got}")
        if points.dim() == 2:
            points = points.unsqueeze(0).expand(batch, -1, -1)
        elif points.dim() != 3 or points.shape[0] != batch:
            raise ValueError(
                f"points must have shape (N, M) or (B, N, M) with B={batch}, got "
                f"{tuple(points.shape)}"
            )
        if points.shape[1] < 1 or points.shape[2] < 1:
            raise ValueError(f"points must hold at least one position per draw, got shape "
                             f"{tuple(points.shape)}")
        lo, hi = int(points.min()), int(points.max())
        if lo < 0 or hi >= ho * wo:
            raise ValueError(
                f"points index the flattened output grid of size {ho}x{wo}, so they must lie "
                f"in [0, {ho * wo}); got values in [{lo}, {hi}]"
            )
        return points.long()

    # ------------------------------------------------------------------ attention
    def _attention(self, pbar: Tensor) -> Tensor:
        """``p̄ (B, N, K, O)`` → ``π (B, K, O)``, computed in at least float32."""
        z = pbar
        if self.descriptor == "standardized":
            mean = z.mean(2, keepdim=True)
            var = z.var(2, unbiased=False, keepdim=True)
            z = (z - mean) * torch.rsqrt(var + STANDARDIZE_EPS)
        if self.fc1 is not None:
            z = self.fc2(F.relu(self.fc1(z.to(self.fc1.weight.dtype)))).to(pbar.dtype)
        if self.log_scale is not None:
            z = z * self.log_scale.to(z.dtype).exp()
        tau = self.temperature.to(z.dtype)
        return torch.softmax(z / tau, dim=2).mean(1)

    def attention(self, x: Tensor, points: Tensor | None = None) -> Tensor:
        """The attention ``π (B, K, O)`` that ``forward(x, points)`` mixes the kernels with.

        Runs one forward pass and returns the π it computed (softmax over the K kernels,
        averaged over the N draws; it sums to 1 over K). With ``points=None`` the
        positions are sampled as :meth:`forward` samples them, so in ``random`` mode pass
        explicit ``points`` (e.g. from :meth:`sample_points`) to know which were used.
        """
        captured: list[Tensor] = []
        compute = self._attention

        def capture(pbar: Tensor) -> Tensor:
            pi = compute(pbar)
            captured.append(pi)
            return pi

        self.__dict__["_attention"] = capture  # shadows the method for this call only
        try:
            self.forward(x, points)
        finally:
            del self.__dict__["_attention"]
        return captured[0]

    def _acc_dtype(self) -> torch.dtype:
        return torch.promote_types(self.weight.dtype, torch.float32)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, points: Tensor | None = None) -> Tensor:
        self._check_input(x)
        if x.shape[0] == 0:
            return self._empty_forward(x)
        b, _, h, w = x.shape
        ho, wo = self.geometry.output_size(h, w)
        if points is None:
            idx = self.sample_points(b, (ho, wo), x.device)
        else:
            idx = self._check_points(points, b, ho, wo).to(x.device)
        x, pad = self.geometry.pad_input(x)
        tracing = _is_tracing()
        grads = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        impl = self.resolve_impl((b, *x.shape[1:]), training=grads, device=x.device,
                                 tracing=tracing)
        if (self.impl == "auto" and tuning.is_benchmark_enabled() and not tracing
                and not _functorch_active()):
            impl = self._measured_impl(x, pad, idx, ho, wo, impl)
        if impl == "plus":
            return self._forward_plus(x, pad, idx, ho, wo)
        return self._forward_kernel(x, pad, idx, ho, wo,
                                    method=impl,
                                    traceable=tracing)

    def _measured_impl(self, x: Tensor, pad: tuple[int, int], idx: Tensor | None, ho: int,
                       wo: int, modelled: str) -> str:
        """``impl="auto"`` with benchmarking on (:mod:`a2d2c.ops.tuning`): the fastest
        form for this signature, timed once — the whole layer (descriptor, attention and
        convolution; the forms compute the descriptor differently), on this input and
        these sampled positions, so no random numbers are drawn."""
        candidates = [modelled, *(i for i in exact_impls(False) if i != modelled)]
        fallible: tuple[str, ...] = ()
        if x.device.type == "cuda" and triton_available():
            # compiled on first use, may fail; triton_plus's backward uses atomics
            fallible = (("triton",) if torch.are_deterministic_algorithms_enabled()
                        else TRITON_IMPLS)
            candidates.extend(fallible)
        key = tuning.signature(
            "A2D2Conv2d", (x, self.weight, self.bias, idx), self.kernel_size, self.stride,
            pad, self.dilation, self.groups, self.head, self.descriptor, self.logit_scale,
            self.hidden_channels, self.out_channels)

        def run(impl: str) -> None:
            def layer(t: list) -> Tensor:
                if impl == "plus":
                    return self._forward_plus(t[0], pad, idx, ho, wo)
                return self._forward_kernel(t[0], pad, idx, ho, wo, method=impl)

            tuning.replay(layer, (x,), params=list(self.parameters()))

        return tuning.tuned_choice(key, candidates, run, x.device, fallible=fallible)

    def _patch_means(self, x: Tensor, pad: tuple[int, int], idx: Tensor | None,
                     ho: int, wo: int) -> Tensor:
        """Mean input patch over the sampled positions: ``(B, N, C, kh·kw)``."""
        b, c, h, w = x.shape
        (kh, kw), (sh, sw), (dh, dw), (ph, pw) = (self.kernel_size, self.stride, self.dilation,
                                                  pad)
        if idx is None:
            # All positions: for kernel offset (i, j) the sum of x over the strided grid of
            # rows i·dh - ph + y·sh and columns j·dw - pw + x·sw that fall inside the input
            # (padding adds zeros). Rows first: kh strided passes over x, then kw cheap
            # column sums of each (B, C, W) row sum; no padded copy of x.
            def span(offset: int, pad: int, step: int, count: int, size: int) -> slice:
                first = offset - pad  # input index of output position 0
                lo = 0 if first >= 0 else (-first + step - 1) // step  # first y inside
                hi = min(count - 1, (size - 1 - first) // step) if first < size else -1
                if hi < lo:
                    return slice(0, 0)
                return slice(first + lo * step, first + hi * step + 1, step)

            rows = [x[:, :, span(i * dh, ph, sh, ho, h), :].sum(2) for i in range(kh)]
            means = [r[:, :, span(j * dw, pw, sw, wo, w)].sum(2) for r in rows for j in range(kw)]
            return (torch.stack(means, dim=-1) / (ho * wo)).unsqueeze(1)
        # Sampled positions: one bag of M input pixels per (sample, draw, kernel offset),
        # summed by embedding_bag over the pixels as rows of a (B·H·W, C) table (a view for
        # channels_last input) with weight 1/M, or 0 for a position in the zero padding
        # (pointing into the same sample's rows, so samples stay independent).
        # Nothing of size B·C·M·kh·kw is materialised, and backward saves only indices.
        n, m = idx.shape[1], idx.shape[2]
        oy = torch.div(idx, wo, rounding_mode="floor")
        ox = idx - oy * wo
        dy = (torch.arange(kh, device=x.device) * dh).repeat_interleave(kw)  # (kh·kw,)
        dx = (torch.arange(kw, device=x.device) * dw).repeat(kh)
        iy = (oy * sh - ph).unsqueeze(-1) + dy
        ix = (ox * sw - pw).unsqueeze(-1) + dx
        inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
        weights = inside.to(x.dtype) / m
        if x.requires_grad and torch.is_grad_enabled():
            # Training: the same sums as one batched GEMM against a per-sample selection
            # matrix S (B, N·kh·kw, H·W) holding the weights at the sampled pixels. Its
            # backward is a GEMM too, where embedding_bag's sorts the indices and scatters
            # into an input-sized gradient (measured: the dearest op of the attention).
            # B·C·H·W·N·kh·kw multiply-adds: 1/O of the convolution's.
            pos = torch.where(inside, iy * w + ix, 0).permute(0, 1, 3, 2)  # (B, N, T, M)
            sel = torch.zeros(b, n, kh * kw, h * w, dtype=x.dtype, device=x.device)
            sel.scatter_add_(3, pos, weights.permute(0, 1, 3, 2))
            means = torch.bmm(sel.view(b, n * kh * kw, h * w), x.reshape(b, c, h * w).mT)
            return means.view(b, n, kh * kw, c).transpose(2, 3)
        sample = torch.arange(b, device=x.device).view(b, 1, 1, 1) * (h * w)
        # A padded tap (weight 0) points at a pixel of its *own* sample: 0·inf = NaN must
        # never carry one sample's non-finite pixel into another sample's means.
        rows = torch.where(inside, sample + iy * w + ix, sample)  # (B, N, M, kh·kw)
        table = x.permute(0, 2, 3, 1).reshape(b * h * w, c)
        bags = rows.permute(0, 1, 3, 2).reshape(b * n * kh * kw, m)
        means = F.embedding_bag(bags, table, mode="sum",  # (B·N·kh·kw, C)
                                per_sample_weights=weights.permute(0, 1, 3, 2).reshape(
                                    b * n * kh * kw, m))
        return means.view(b, n, kh * kw, c).transpose(2, 3)

    def _forward_kernel(self, x: Tensor, pad: tuple[int, int], idx: Tensor | None,
                        ho: int, wo: int, method: str = "kernel",
                        traceable: bool = False) -> Tensor:
        b, c = x.shape[:2]
        k, o, g = self.num_kernels, self.out_channels, self.groups
        acc = self._acc_dtype()
        with torch.autocast(x.device.type, enabled=False):
            patches = self._patch_means(x.to(acc), pad, idx, ho, wo)  # (B, N, C, T)
            n = patches.shape[1]
            weight = self.weight.to(acc)
            if g == 1:
                # One GEMM against the bank as stored, (K·O, m): its backward reads and
                # writes contiguous rows (the einsum below transposes the 4-D bank, and
                # its backward was ~3x slower at 512 channels, 1 thread).
                pbar = torch.matmul(patches.reshape(b * n, -1),
                                    weight.view(k * o, -1).t()).view(b, n, k, o)
            else:
                pbar = torch.einsum(
                    "kgoct,bngct->bnkgo",
                    weight.view(k, g, o // g, c // g, -1),
                    patches.reshape(b, n, g, c // g, -1),
                ).reshape(b, n, k, o)
            if self.bias is not None:
                pbar = pbar + self.bias.to(acc)
            pi = self._attention(pbar)  # (B, K, O)
        # Under torch.compile the op is one opaque node that takes the kernel or unfold
        # path for the real shapes at run time: pass "auto" through to it (export and ONNX
        # keep the layer's own traced choice).
        if traceable and self.impl == "auto" and _opaque_under_compile():
            method = "auto"
        return mixed_conv2d(x, self.weight, pi, self.bias, self.stride, pad, self.dilation,
                            self.groups, impl=method)

    def _forward_plus(self, x: Tensor, pad: tuple[int, int], idx: Tensor | None,
                      ho: int, wo: int) -> Tensor:
        b = x.shape[0]
        k, o = self.num_kernels, self.out_channels
        # F_k = conv(x, W_k) + b_k, all K at once: (B, K, O, H', W')
        method = plus_method(x, self.weight, self.stride, pad, self.dilation, self.groups)
        feats = plus_responses(x, self.weight, self.bias, self.stride, pad, self.dilation,
                               self.groups, method)
        acc = self._acc_dtype()
        with torch.autocast(x.device.type, enabled=False):
            if idx is None:
                pbar = feats.to(acc).mean((-2, -1)).unsqueeze(1)  # (B, 1, K, O)
            else:
                n = idx.shape[1]
                flat = idx.reshape(b, 1, -1).expand(b, k * o, -1)
                pbar = feats.reshape(b, k * o, ho * wo).gather(2, flat).to(acc)
                pbar = pbar.view(b, k, o, n, -1).mean(-1).permute(0, 3, 1, 2)  # (B, N, K, O)
            pi = self._attention(pbar)
        return mix_responses(feats, pi)
