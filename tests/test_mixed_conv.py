"""``a2d2c.ops.mixed_conv2d`` against a float64 loop written from its definition.

The oracle (``_mixed_oracle.py``) is a float64 loop over samples, channels and output
positions that shares no code with the op.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from _mixed_oracle import oracle
from a2d2c import CondConv2d, DynamicConv2d, ODConv2d
from a2d2c.ops import mixed_conv2d
from a2d2c.ops.cost import choose_impl

D = torch.float64


B, K, O, C = 2, 3, 4, 4
# name: (coeff shape, kernel size); "T" marks a tap-dependent coefficient
COEFFS = {
    "BK": ((B, K), (3, 2)),
    "1K": ((1, K), (3, 2)),
    "BKO": ((B, K, O), (3, 2)),
    "BK1": ((B, K, 1), (3, 3)),
    "BKkk": ((B, K, 3, 2), (3, 2)),
    "BK1k": ((B, K, 1, 2), (3, 2)),
    "BKOkk": ((B, K, O, 3, 2), (3, 2)),
    "BKO11": ((B, K, O, 1, 1), (3, 2)),
    "BK1kk": ((B, K, 1, 3, 2), (3, 2)),
    "BKkk_1x1": ((B, K, 1, 1), (1, 1)),
}
GEOMETRIES = {
    "plain": dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, hw=(5, 6)),
    "strided": dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, hw=(7, 5)),
    "dilated": dict(stride=(1, 2), padding=(2, 1), dilation=(2, 1), groups=4, hw=(6, 7)),
}


def _tap_dependent(shape, ksize):
    return len(shape) >= 4 and shape[-1] * shape[-2] > 1 and ksize[0] * ksize[1] > 1


def _make(coeff_name, geo_name, bias_kind, scales, seed=0):
    torch.manual_seed(seed)
    shape, (kh, kw) = COEFFS[coeff_name]
    geo = GEOMETRIES[geo_name]
    g = geo["groups"]
    x = torch.randn(B, C, *geo["hw"], dtype=D, requires_grad=True)
    weight = torch.randn(K, O, C // g, kh, kw, dtype=D, requires_grad=True)
    coeff = torch.rand(*shape, dtype=D, requires_grad=True)
    bias = {"none": None, "KO": (K, O), "BO": (B, O, 1, 1), "O": (O,)}[bias_kind]
    bias = None if bias is None else torch.randn(*bias, dtype=D, requires_grad=True)
    s_in = torch.rand(B, C, dtype=D, requires_grad=True) if "in" in scales else None
    s_out = torch.rand(B, O, dtype=D, requires_grad=True) if "out" in scales else None
    args = dict(stride=geo["stride"], padding=geo["padding"], dilation=geo["dilation"],
                groups=g)
    return x, weight, coeff, bias, s_in, s_out, args


def _grads(out, tensors, seed=1):
    torch.manual_seed(seed)
    gy = torch.randn_like(out)
    live = [t for t in tensors if t is not None]
    return torch.autograd.grad(out, live, gy)


def _check(impl, coeff_name, geo_name, bias_kind, scales):
    x, weight, coeff, bias, s_in, s_out, args = _make(coeff_name, geo_name, bias_kind, scales)
    tensors = (x, weight, coeff, bias, s_in, s_out)
    want = oracle(x, weight, coeff, bias, args["stride"], args["padding"], args["dilation"],
                  args["groups"], s_in, s_out)
    got = mixed_conv2d(x, weight, coeff, bias, **args, in_scale=s_in, out_scale=s_out,
                       impl=impl)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want)
    for g_got, g_want in zip(_grads(got, tensors), _grads(want, tensors), strict=True):
        torch.testing.assert_close(g_got, g_want)


CASES = [
    # every coefficient shape, with and without scales and bias, on the three geometries
    (c, geo, bias, scales)
    for c in COEFFS
    for geo, bias, scales in (("plain", "none", ""), ("strided", "BO", "in+out"),
                              ("dilated", "O", "out"))
] + [(c, "strided", "KO", "in") for c in COEFFS
     if not _tap_dependent(*COEFFS[c])]


@pytest.mark.parametrize("impl", ["kernel", "unfold", "plus"])
@pytest.mark.parametrize("coeff_name,geo_name,bias_kind,scales", CASES)
def test_matches_float64_loop_oracle(impl, coeff_name, geo_name, bias_kind, scales):
    if impl == "plus" and _tap_dependent(*COEFFS[coeff_name]):
        pytest.skip("the plus form is not exact for tap-dependent coefficients")
    _check(impl, coeff_name, geo_name, bias_kind, scales)


@pytest.mark.parametrize("coeff_name", ["BKO", "BKkk"])
def test_auto_matches_oracle(coeff_name):
    _check("auto", coeff_name, "strided", "BO", "in+out")


@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "no_requires_grad"])
@pytest.mark.parametrize("impl", ["kernel", "unfold"])
def test_without_gradients_matches_oracle(impl, context):
    """The gradient-free route (no autograd.Function) gives the oracle and no graph."""
    x, weight, coeff, bias, s_in, s_out, args = _make("BKO", "strided", "KO", "in+out")
    want = oracle(x, weight, coeff, bias, args["stride"], args["padding"], args["dilation"],
                  args["groups"], s_in, s_out).detach()
    tensors = [t.detach() for t in (x, weight, coeff, bias, s_in, s_out)]
    if context == "no_requires_grad":
        got = mixed_conv2d(*tensors[:4], **args, in_scale=tensors[4], out_scale=tensors[5],
                           impl=impl)
    else:
        mode = torch.no_grad() if context == "no_grad" else torch.inference_mode()
        with mode:
            got = mixed_conv2d(x, weight, coeff, bias, **args, in_scale=s_in, out_scale=s_out,
                               impl=impl)
    assert got.grad_fn is None and not got.requires_grad
    torch.testing.assert_close(got, want)


def test_plus_rejects_tap_dependent_coefficients():
    x, weight, coeff, *_ = _make("BKkk", "plain", "none", "")
    with pytest.raises(ValueError, match="impl='plus' is exact only"):
        mixed_conv2d(x, weight, coeff, impl="plus")
    with pytest.raises(ValueError, match="impl='triton_plus' is exact only"):
        mixed_conv2d(x, weight, coeff, impl="triton_plus")
    with pytest.raises(ValueError, match=r"bias of shape \(K, O\)"):
        mixed_conv2d(x, weight, coeff, torch.zeros(K, O, dtype=D))


@pytest.mark.parametrize("bad,match", [
    (dict(coeff=torch.zeros(B, K + 1)), "coeff must have shape"),
    (dict(coeff=torch.zeros(B, K, O, 2)), "coeff must have shape"),
    (dict(bias=torch.zeros(K, O + 1)), "bias must have shape"),
    (dict(in_scale=torch.zeros(B, C + 1)), "in_scale must have shape"),
    (dict(out_scale=torch.zeros(3, O)), "out_scale must have shape"),
    (dict(groups=3), "groups=3 needs"),
    (dict(impl="fast"), "impl must be one of"),
])
def test_errors_name_the_bad_argument(bad, match):
    args = dict(x=torch.randn(B, C, 5, 5), weight=torch.randn(K, O, C, 3, 3),
                coeff=torch.rand(B, K))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        mixed_conv2d(**args)


def test_gradcheck_kernel_form_with_everything():
    x, weight, coeff, bias, s_in, s_out, args = _make("BK1kk", "strided", "BO", "in+out")

    def fn(x, weight, coeff, bias, s_in, s_out):
        return mixed_conv2d(x, weight, coeff, bias, **args, in_scale=s_in, out_scale=s_out,
                            impl="kernel")

    assert torch.autograd.gradcheck(fn, (x, weight, coeff, bias, s_in, s_out), fast_mode=True)


def test_autocast_bf16_runs_the_conv_in_bf16():
    x, weight, coeff, *_ = _make("BKO", "plain", "KO", "out")
    x32, w32, c32 = x.float(), weight.float(), coeff.float()
    for impl in ("kernel", "unfold", "plus"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = mixed_conv2d(x32, w32, c32, impl=impl)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.double(), oracle(x, weight, coeff, None, (1, 1), (0, 0),
                                                      (1, 1), 1, None, None),
                                   atol=0.1, rtol=0.05)


class _ConvShapes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.weights = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.mkldnn_convolution,
                                   torch.ops.aten._convolution):
            self.weights.append(tuple(args[1].shape))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("layer_cls", [CondConv2d, DynamicConv2d, ODConv2d])
def test_auto_picks_an_exact_path_per_layer_type(layer_cls):
    """Small maps, training: the plus form (one dense K·O conv) wherever it is exact.

    The shape is one where the committed CPU grid measured the plus form clearly fastest
    (CondConv, 32 ch 4² b256 training: plus 19.7 ms, kernel 28.2, unfold 31.2)."""
    small = layer_cls(32, 32, 3, padding=1, num_kernels=4)
    x = torch.randn(256, 32, 4, 4, requires_grad=True)
    with _ConvShapes() as seen:
        small(x)
    if layer_cls is not ODConv2d:
        assert seen.weights == [(4 * 32, 32, 3, 3)]
    else:  # its spatial attention is a factored tap scale: the plus form on scaled columns,
        # one GEMM and no convolution at all
        assert seen.weights == []
    # large maps: the per-sample kernel form (B·O output channels, one grouped conv)
    layer = layer_cls(128, 128, 3, padding=1, num_kernels=4)
    x = torch.randn(2, 128, 32, 32)
    with torch.no_grad(), _ConvShapes() as seen:
        layer(x)
    assert seen.weights == [(2 * 128, 128, 3, 3)]
    # candidates are respected: the cost model never returns a path it was not offered
    shape = dict(batch=32, in_channels=128, out_channels=128, kernel_size=(3, 3), groups=1,
                 output_size=(4, 4), num_kernels=4, training=True, device_type="cuda")
    assert choose_impl(**shape) == "plus"
    assert choose_impl(candidates=("kernel", "unfold"), **shape) != "plus"


@pytest.mark.parametrize("impl", ["kernel", "unfold"])
@pytest.mark.parametrize("coeff_shape,scales,bias_kind", [
    ((5, K, O), "in+out", "KO"), ((1, K), "", "BO"), ((5, K, 3, 2), "out", "O")])
def test_batch_chunks_match_the_oracle(monkeypatch, impl, coeff_shape, scales, bias_kind):
    """On CPU the kernel/unfold paths run the batch in chunks (uneven here: 2, 2, 1)."""
    import a2d2c.ops.mixed_conv as mc

    torch.manual_seed(3)
    b, g = 5, 2
    x = torch.randn(b, C, 6, 5, dtype=D, requires_grad=True)
    weight = torch.randn(K, O, C // g, 3, 2, dtype=D, requires_grad=True)
    monkeypatch.setattr(mc, "CPU_KERNEL_CHUNK_BYTES", 2 * weight[0].numel() * 8)
    assert [s.stop - s.start for s in mc._batch_chunks(x, weight)] == [2, 2, 1]
    coeff = torch.rand(*coeff_shape, dtype=D, requires_grad=True)
    bias = {"KO": (K, O), "BO": (b, O, 1, 1), "O": (O,)}[bias_kind]
    bias = torch.randn(*bias, dtype=D, requires_grad=True)
    s_in = torch.rand(b, C, dtype=D, requires_grad=True) if "in" in scales else None
    s_out = torch.rand(b, O, dtype=D, requires_grad=True) if "out" in scales else None
    args = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=g)
    want = oracle(x, weight, coeff, bias, args["stride"], args["padding"], args["dilation"], g,
                  s_in, s_out)
    got = mixed_conv2d(x, weight, coeff, bias, **args, in_scale=s_in, out_scale=s_out, impl=impl)
    torch.testing.assert_close(got, want)
    tensors = (x, weight, coeff, bias, s_in, s_out)
    for g_got, g_want in zip(_grads(got, tensors), _grads(want, tensors), strict=True):
        torch.testing.assert_close(g_got, g_want)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("wanted", ["weight", "coeff", "x+weight", "x+coeff"])
@pytest.mark.parametrize("coeff_shape", [(5, K, O), (5, K)])
def test_batch_chunks_with_some_gradients_match_the_oracle(monkeypatch, coeff_shape, wanted,
                                                           shared):
    """Chunks of a large bank share its gradient sum and its (O, K, m) copy (here every
    bank is "large" or none): each is made only for the gradient that needs it, and
    either alone is still right."""
    import a2d2c.ops.mixed_conv as mc

    torch.manual_seed(4)
    b = 5
    x = torch.randn(b, C, 6, 5, dtype=D, requires_grad="x" in wanted)
    weight = torch.randn(K, O, C, 3, 3, dtype=D, requires_grad="weight" in wanted)
    coeff = torch.rand(*coeff_shape, dtype=D, requires_grad="coeff" in wanted)
    monkeypatch.setattr(mc, "CPU_KERNEL_CHUNK_BYTES", 2 * weight[0].numel() * 8)
    monkeypatch.setattr(mc, "CPU_SHARED_BANK_BYTES", 0 if shared else 1 << 40)
    assert len(mc._batch_chunks(x, weight)) == 3
    made = []
    plan = mc._SharedBankGrads.for_chunks
    monkeypatch.setattr(mc._SharedBankGrads, "for_chunks",
                        staticmethod(lambda *a: made.append(plan(*a)) or made[-1]))
    tensors = [t for t in (x, weight, coeff) if t.requires_grad]
    want = oracle(x, weight, coeff, None, (1, 1), (1, 1), (1, 1), 1, None, None)
    got = mixed_conv2d(x, weight, coeff, None, 1, 1, impl="kernel")
    for g_got, g_want in zip(_grads(got, tensors), _grads(want, tensors), strict=True):
        torch.testing.assert_close(g_got, g_want)
    wants_bank = weight.requires_grad or coeff.requires_grad
    assert len(made) == 1 and (made[0] is not None) == (shared and wants_bank)
    if made[0] is not None:
        assert (made[0].grad_w is not None) == weight.requires_grad
        assert (made[0].w_o is not None) == coeff.requires_grad


@pytest.mark.parametrize("coeff_shape,scales,bias_kind", [
    ((4, K, 5), "in+out", "KO"), ((1, K), "", "BO"), ((4, K, 3, 2), "out", "O"),
    ((4, K, 5, 3, 2), "in", "BO"), ((4, K, 1), "in+out", "KO")])
def test_output_channel_blocks_match_the_oracle(monkeypatch, coeff_shape, scales, bias_kind):
    """On CPU the unfold path runs small maps by blocks of output channels (uneven: 2, 2, 1
    of O = 5); every gradient, summed over the blocks or written per block, matches the loop."""
    import a2d2c.ops.mixed_conv as mc

    torch.manual_seed(5)
    b = 4
    x = torch.randn(b, C, 5, 4, dtype=D, requires_grad=True)
    weight = torch.randn(K, 5, C, 3, 2, dtype=D, requires_grad=True)
    monkeypatch.setattr(mc, "CPU_KERNEL_CHUNK_BYTES", 2 * b * weight[0, 0].numel() * 8)
    monkeypatch.setattr(mc, "CPU_MIN_BLOCK_CHANNELS", 1)
    args = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=1)
    ho, wo = mc._out_size((5, 4), (3, 2), args["stride"], args["padding"], args["dilation"])
    blocks = mc._out_blocks(x, weight, 1, "unfold", ho * wo)
    assert [s.stop - s.start for s in blocks] == [2, 2, 1]
    assert mc._out_blocks(x, weight, 1, "kernel", ho * wo) is None  # the grouped conv: batch
    coeff = torch.rand(*coeff_shape, dtype=D, requires_grad=True)
    bias = {"KO": (K, 5), "BO": (b, 5, 1, 1), "O": (5,)}[bias_kind]
    bias = torch.randn(*bias, dtype=D, requires_grad=True)
    s_in = torch.rand(b, C, dtype=D, requires_grad=True) if "in" in scales else None
    s_out = torch.rand(b, 5, dtype=D, requires_grad=True) if "out" in scales else None
    want = oracle(x, weight, coeff, bias, args["stride"], args["padding"], args["dilation"], 1,
                  s_in, s_out)
    got = mixed_conv2d(x, weight, coeff, bias, **args, in_scale=s_in, out_scale=s_out,
                       impl="unfold")
    torch.testing.assert_close(got, want)
    tensors = (x, weight, coeff, bias, s_in, s_out)
    for g_got, g_want in zip(_grads(got, tensors), _grads(want, tensors), strict=True):
        torch.testing.assert_close(g_got, g_want)


def test_output_channel_blocks_only_where_they_pay():
    """The plan follows the traffic rule: small maps and wide layers get blocks, large maps
    batch chunks; grouped layers and a single sample never get blocks."""
    import a2d2c.ops.mixed_conv as mc

    w = torch.empty(4, 512, 512, 3, 3)
    small = torch.empty(32, 512, 4, 4)
    blocks = mc._out_blocks(small, w, 1, "unfold", 16)
    assert blocks is not None and sum(s.stop - s.start for s in blocks) == 512
    assert min(s.stop - s.start for s in blocks) >= mc.CPU_MIN_BLOCK_CHANNELS
    assert mc._out_blocks(torch.empty(32, 512, 32, 32), w, 1, "unfold", 1024) is None
    assert mc._out_blocks(small[:1], w, 1, "unfold", 16) is None
    wg = torch.empty(4, 512, 256, 3, 3)
    assert mc._out_blocks(small, wg, 2, "unfold", 16) is None


def test_kernel_workspace_is_reused_and_never_aliases_an_output():
    """The mixed kernels go into one reusable buffer per thread (CPU); outputs and
    gradients of earlier calls must survive later calls, also from other threads."""
    import threading

    import a2d2c.ops.mixed_conv as mc

    torch.manual_seed(4)
    w1 = torch.randn(2, 6, 4, 3, 3)
    buf_a = mc.kernel_workspace((3, 6, 4, 9), torch.float32, torch.device("cpu"))
    buf_b = mc.kernel_workspace((2, 6, 4, 9), torch.float32, torch.device("cpu"))
    assert buf_a.data_ptr() == buf_b.data_ptr()  # one buffer, reused
    calls = [(torch.randn(3, 4, 7, 7), torch.rand(3, 2, 6)) for _ in range(3)]
    outs = [mixed_conv2d(x, w1, a, padding=1, impl="kernel") for x, a in calls]
    for (x, a), y in zip(calls, outs, strict=True):
        torch.testing.assert_close(y, oracle(x.double(), w1.double(), a.double(), None,
                                             (1, 1), (1, 1), (1, 1), 1, None, None).float())
    errors: list[str] = []

    def work(seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        for _ in range(20):
            x = torch.randn(2, 4, 6, 6, generator=g)
            a = torch.rand(2, 2, 6, generator=g)
            y = mixed_conv2d(x, w1, a, padding=1, impl="kernel")
            want = oracle(x.double(), w1.double(), a.double(), None, (1, 1), (1, 1), (1, 1), 1,
                          None, None)
            if not torch.allclose(y.double(), want, atol=1e-4, rtol=1e-4):
                errors.append(f"thread {seed}: wrong output")

    threads = [threading.Thread(target=work, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_workspace_survives_inference_mode_then_training():
    """The workspace first allocated under inference_mode is still writable in training."""
    import a2d2c.ops.mixed_conv as mc
    from a2d2c import A2D2Conv2d

    mc._WORKSPACE.__dict__.pop("buf", None)  # this thread's first workspace is made below
    layer = A2D2Conv2d(8, 8, 3, padding=1, impl="kernel")
    x = torch.randn(2, 8, 10, 10)
    with torch.inference_mode():
        layer.eval()(x)
    layer.train()
    xg = x.clone().requires_grad_()
    layer(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    with torch.inference_mode():
        got = mixed_conv2d(x, torch.ones(2, 3, 8, 3, 3), torch.full((2, 2), 0.5), padding=1,
                           impl="kernel")
        want = torch.nn.functional.conv2d(x, torch.ones(3, 8, 3, 3), padding=1)
        torch.testing.assert_close(got, want)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None
                    or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                    reason="needs triton, without its CPU interpreter")
@pytest.mark.parametrize("impl", ["triton", "triton_plus"])
def test_triton_paths_on_cpu_tensors_say_what_to_use(impl):
    x, weight, coeff, *_ = _make("BKO", "plain", "none", "")
    with pytest.raises(ValueError, match=rf"impl='{impl}' needs CUDA tensors .*use impl='auto'"):
        mixed_conv2d(x.float(), weight.float(), coeff.float(), impl=impl)


# ------------------------------------------------------------------ under torch.compile
COMPILE_CASES = [  # (impl, coeff, geometry, bias, scales): each path the opaque op runs
    ("kernel", "BKO", "strided", "KO", "in"),
    ("unfold", "BKOkk", "dilated", "BO", "in+out"),
    ("auto", "BKkk", "strided", "O", "in+out"),  # tap-dependent: auto is never the plus form
]


@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd")
@pytest.mark.parametrize("impl,coeff_name,geo_name,bias_kind,scales", COMPILE_CASES)
def test_torch_compile_runs_one_opaque_op_and_matches_oracle(impl, coeff_name, geo_name,
                                                             bias_kind, scales):
    """Under torch.compile the op is one node forward and one backward (the eager paths, not
    plain ops traced), with the oracle's output and every gradient."""
    from torch._dynamo.testing import AotEagerAndRecordGraphs

    torch._dynamo.reset()
    x, weight, coeff, bias, s_in, s_out, args = _make(coeff_name, geo_name, bias_kind, scales)
    tensors = (x, weight, coeff, bias, s_in, s_out)
    backend = AotEagerAndRecordGraphs()

    def fn(x, weight, coeff, bias, s_in, s_out):
        return mixed_conv2d(x, weight, coeff, bias, **args, in_scale=s_in, out_scale=s_out,
                            impl=impl)

    got = torch.compile(fn, backend=backend, fullgraph=True)(*tensors)
    want = oracle(x, weight, coeff, bias, args["stride"], args["padding"], args["dilation"],
                  args["groups"], s_in, s_out)
    torch.testing.assert_close(got, want)
    for g_got, g_want in zip(_grads(got, tensors), _grads(want, tensors), strict=True):
        torch.testing.assert_close(g_got, g_want)

    def targets(graphs):
        return {str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"}

    assert "a2d2c.mixed_conv2d.default" in targets(backend.fw_graphs)
    assert "a2d2c.mixed_conv2d_backward.default" in targets(backend.bw_graphs)
    assert not any("convolution" in t for t in targets(backend.fw_graphs))
    torch._dynamo.reset()


@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd")
def test_compiled_op_serves_every_batch_size_with_one_graph():
    """The opaque op's shape function follows the batch: one compilation (dynamic batch)
    serves five batch sizes, and each output and gradient is the eager op's."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    torch.manual_seed(3)
    weight = torch.randn(3, 6, 4, 3, 3, requires_grad=True)
    counter = CompileCounterWithBackend("aot_eager")

    def fn(x, coeff):
        return mixed_conv2d(x, weight, coeff, padding=1, impl="kernel")

    compiled = torch.compile(fn, backend=counter)
    for batch in (2, 3, 5, 7, 6):
        x = torch.randn(batch, 4, 6, 5, requires_grad=True)
        coeff = torch.rand(batch, 3, 6, requires_grad=True)
        if batch == 2:
            torch._dynamo.mark_dynamic(x, 0)
            torch._dynamo.mark_dynamic(coeff, 0)
        got = compiled(x, coeff)
        want = fn(x, coeff)
        torch.testing.assert_close(got, want)
        gy = torch.randn_like(want)
        for a, b in zip(torch.autograd.grad(got, (x, coeff, weight), gy),
                        torch.autograd.grad(want, (x, coeff, weight), gy), strict=True):
            torch.testing.assert_close(a, b)
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times for 5 batch sizes"
    torch._dynamo.reset()


def test_opaque_ops_pass_torch_library_opcheck():
    """Schema, shape functions (fake tensors) and the registered autograd agree with the
    real kernels (torch.library.opcheck)."""
    x, weight, coeff, _bias, s_in, s_out, args = _make("BKO", "strided", "none", "in+out")
    a = coeff.detach().view(B, K, O, 1).requires_grad_()
    bias_b = torch.randn(B, O, dtype=D, requires_grad=True)
    common = (list(args["stride"]), list(args["padding"]), list(args["dilation"]),
              args["groups"])
    fwd = (x, weight, a, s_in, s_out, bias_b, *common, "auto", D, True)
    torch.library.opcheck(torch.ops.a2d2c.mixed_conv2d.default, fwd)
    y = torch.ops.a2d2c.mixed_conv2d(*[t.detach() if isinstance(t, torch.Tensor) else t
                                       for t in fwd])
    bwd = (torch.randn_like(y), *[t.detach() for t in (x, weight, a, s_in, s_out, bias_b)],
           *common, "unfold", D, [True, True, False, True, False, True])
    torch.library.opcheck(torch.ops.a2d2c.mixed_conv2d_backward.default, bwd)


# ------------------------------------------------------------------ tap_scale (ODConv)
@pytest.mark.parametrize("impl", ["kernel", "unfold", "plus", "auto"])
@pytest.mark.parametrize("geo_name", list(GEOMETRIES))
@pytest.mark.parametrize("coeff_name,bias_kind,scales", [
    ("BK", "BO", "in+out"), ("BKO", "KO", "out"), ("1K", "none", ""), ("BK1", "O", "in")])
def test_tap_scale_matches_the_oracle(impl, geo_name, coeff_name, bias_kind, scales):
    """A factored per-tap scale ``s_tap[b, t]`` (ODConv's spatial attention): the op with
    ``coeff`` and ``tap_scale`` against the loop oracle given the product ``coeff ⊙ s_tap``
    as a tap-dependent coefficient — output and the gradients of every tensor, on every
    path (the plus form scales its im2col columns per tap)."""
    x, weight, coeff, bias, s_in, s_out, args = _make(coeff_name, geo_name, bias_kind, scales)
    kh, kw = weight.shape[3:]
    tap = torch.rand(B, kh, kw, dtype=D, requires_grad=True)
    full = coeff if coeff.dim() == 3 else coeff[:, :, None]  # (B|1, K, O|1)
    product = full[..., None, None] * tap[:, None, None]  # (B, K, O|1, kh, kw)
    mixed_bias = bias is not None and bias.shape == (K, O)  # mixed with coeff, no tap scale
    want = oracle(x, weight, product, None if mixed_bias else bias, args["stride"],
                  args["padding"], args["dilation"], args["groups"], s_in, s_out)
    if mixed_bias:
        want = want + (full.expand(B, K, O) * bias).sum(1)[:, :, None, None]
    got = mixed_conv2d(x, weight, coeff, bias, **args, in_scale=s_in, out_scale=s_out,
                       tap_scale=tap, impl=impl)
    torch.testing.assert_close(got, want)
    assert got.is_contiguous()  # like F.conv2d (and randn_like(got) below follows its strides)
    tensors = (x, weight, coeff, bias, s_in, s_out, tap)
    for g_got, g_want in zip(_grads(got, tensors), _grads(want, tensors), strict=True):
        torch.testing.assert_close(g_got, g_want)


def test_tap_scale_plus_form_runs_on_scaled_columns_and_auto_may_choose_it():
    """With a factored tap scale the plus form is one GEMM over im2col columns (no grouped
    or dense convolution), and ``auto`` takes it where the model prices it cheapest: small
    maps of wide layers (measured, ODConv 128 ch 4² b128 training: 6.3x static, the
    per-tap kernel form 20x)."""
    from a2d2c.ops.mixed_conv import auto_impl

    x = torch.randn(2, 4, 5, 5, dtype=D)
    weight = torch.randn(K, 6, 4, 3, 3, dtype=D)
    coeff, tap = torch.rand(2, K, dtype=D), torch.rand(2, 3, 3, dtype=D)
    with _ConvShapes() as seen:
        mixed_conv2d(x, weight, coeff, padding=1, tap_scale=tap, impl="plus")
    assert seen.weights == []
    shape = dict(stride=(1, 1), padding=(1, 1), training=True, device_type="cpu")
    assert auto_impl((128, 128, 4, 4), (4, 128, 128, 3, 3), False, tap_scaled=True,
                     **shape) == "plus"
    assert auto_impl((32, 128, 16, 16), (4, 128, 128, 3, 3), False, tap_scaled=True,
                     **shape) == "kernel"
    # without the factored form a per-tap coefficient never gets the plus form
    assert auto_impl((128, 128, 4, 4), (4, 128, 128, 3, 3), True, **shape) != "plus"


def test_tap_scale_errors_say_what_to_pass():
    x = torch.randn(2, 4, 5, 5)
    weight = torch.randn(K, O, 4, 3, 3)
    with pytest.raises(ValueError, match=r"tap_scale must have shape \(B, kh, kw\)"):
        mixed_conv2d(x, weight, torch.rand(2, K), tap_scale=torch.rand(2, 9))
    with pytest.raises(ValueError, match="impl='plus' takes a tap_scale"):
        mixed_conv2d(x, weight, torch.rand(2, K), tap_scale=torch.rand(2, 3, 3),
                     impl="triton_plus")
    with pytest.raises(ValueError, match="pass the tap-dependent part as tap_scale"):
        mixed_conv2d(x, weight, torch.rand(2, K, 3, 3), impl="plus")
    # both tap-dependent: the product has no factored form
    with pytest.raises(ValueError, match="exact only for coefficients independent"):
        mixed_conv2d(x, weight, torch.rand(2, K, 3, 3), tap_scale=torch.rand(2, 3, 3),
                     impl="plus")


# ------------------------------------------------------------------ plus form: conv or GEMM
@pytest.mark.parametrize("coeff_name,geo_name,bias_kind,scales",
                         [c for c in CASES if not _tap_dependent(*COEFFS[c[0]])])
def test_plus_form_by_gemm_matches_the_oracle(monkeypatch, coeff_name, geo_name, bias_kind,
                                              scales):
    """The plus form's responses by im2col + one GEMM per group (the measured choice may
    take it on CPU): output and every gradient against the loop oracle, no convolution."""
    from a2d2c.ops import mixed_conv as mc

    monkeypatch.setattr(mc, "plus_method", lambda *a, **k: "gemm")
    with _ConvShapes() as seen:
        _check("plus", coeff_name, geo_name, bias_kind, scales)
    assert seen.weights == []


def test_plus_method_is_measured_only_under_benchmark(monkeypatch):
    """``plus_method``: the convolution by default; with measured choice on, the faster of
    the two methods for the signature (timed once, cached under ``plus_responses``)."""
    from a2d2c.ops import tuning
    from a2d2c.ops.mixed_conv import PLUS_METHODS, plus_method

    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    weight = torch.randn(2, 6, 4, 3, 3, requires_grad=True)
    geo = ((1, 1), (1, 1), (1, 1), 1)
    assert plus_method(x, weight, *geo) == "conv"
    timed = []
    for fast in PLUS_METHODS:
        tuning.clear_cache()
        seconds = {"conv": 2.0, "gemm": 2.0, fast: 1.0}
        monkeypatch.setattr(tuning, "_time_path",
                            lambda run, impl, *a, s=seconds: timed.append(impl) or s[impl])
        with tuning.benchmark():
            assert plus_method(x, weight, *geo) == fast
            assert plus_method(x, weight, *geo) == fast  # cached: not timed again
    assert timed == ["conv", "gemm"] * 2
    (key, measured), = tuning.cache_info().items()
    assert key[0] == "plus_responses" and measured.choice == "gemm"
    monkeypatch.undo()
    tuning.clear_cache()
    with tuning.benchmark(repeats=1):  # real timing: either, and nothing accumulated
        assert plus_method(x, weight, *geo) in PLUS_METHODS
    assert x.grad is None and weight.grad is None
    tuning.clear_cache()
