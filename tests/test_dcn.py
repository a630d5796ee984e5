"""DCNv3/DCNv4 sampling, modules and the InternImage backbones.

The oracle is a float64 loop written from the formulas (sample positions, bilinear
interpolation with zero outside the image, the strict ``-1 < x < W`` rule), not from
the implementation; its gradients come from autograd through the loop.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import a2d2c
from a2d2c.ops import dcnv3_core, unpack_offset_mask


def _oracle(value, offset, mask, kh, kw, sh, sw, ph, pw, dh, dw, group, gc, s, remove_center):
    """out[n,ho,wo,g] = Σ_p mask · bilinear(value[n,:,:,g], x_p, y_p), one sample at a time."""
    n_, h, w, _ = value.shape
    ho_n = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo_n = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    points = []
    for i in range(kw):  # kernel column (x) outer
        for j in range(kh):  # kernel row (y) inner
            if remove_center and i == kw // 2 and j == kh // 2:
                continue
            points.append((i, j))
    npts = len(points)
    cw, ch = (dw * (kw - 1)) // 2, (dh * (kh - 1)) // 2
    rows = []
    for n in range(n_):
        for ho in range(ho_n):
            for wo in range(wo_n):
                pix = []
                for g in range(group):
                    acc = value.new_zeros(gc)
                    for p, (i, j) in enumerate(points):
                        dx = offset[n, ho, wo, (g * npts + p) * 2]
                        dy = offset[n, ho, wo, (g * npts + p) * 2 + 1]
                        x = wo * sw - pw + cw - cw * s + (i * dw + dx) * s
                        y = ho * sh - ph + ch - ch * s + (j * dh + dy) * s
                        if not (-1 < float(y.detach()) < h and -1 < float(x.detach()) < w):
                            continue
                        x0, y0 = math.floor(float(x.detach())), math.floor(float(y.detach()))
                        lx, ly = x - x0, y - y0
                        sample = value.new_zeros(gc)
                        for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
                            for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
                                if 0 <= yy < h and 0 <= xx < w:
                                    sample = sample + wx * wy * value[n, yy, xx,
                                                                      g * gc:(g + 1) * gc]
                        acc = acc + mask[n, ho, wo, g * npts + p] * sample
                    pix.append(acc)
                rows.append(torch.cat(pix))
    return torch.stack(rows).view(n_, ho_n, wo_n, group * gc)


# kh, kw, sh, sw, ph, pw, dh, dw, group, gc, offset_scale, remove_center
CASES = [
    (3, 3, 1, 1, 1, 1, 1, 1, 2, 3, 1.0, False),
    (3, 5, 2, 1, 0, 2, 1, 2, 1, 2, 0.5, False),  # non-square everything
    (3, 3, 1, 2, 2, 1, 2, 1, 3, 1, 2.0, True),  # remove_center, pad_h != pad_w
    (2, 2, 1, 1, 0, 1, 1, 1, 1, 2, 1.0, False),  # even kernel
    (1, 3, 1, 1, 0, 1, 1, 1, 2, 2, 1.5, False),
]


def _inputs(case, n=1, h=5, w=7, integer=False, seed=0):
    kh, kw, sh, sw, ph, pw, dh, dw, g, gc, _s, rc = case
    gen = torch.Generator().manual_seed(seed)
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    pts = kh * kw - rc
    value = torch.randn(n, h, w, g * gc, generator=gen, dtype=torch.float64)
    if integer:  # exactly-integer sample positions (offset_scale times an integer grid)
        offset = torch.randint(-3, 4, (n, ho, wo, g * pts * 2), generator=gen).double()
    else:
        offset = 2.5 * torch.randn(n, ho, wo, g * pts * 2, generator=gen, dtype=torch.float64)
        # Push some samples far outside, on each side (x, then y; negative, then positive).
        flat = offset.view(-1, 2)
        k = flat.shape[0]
        flat[0 : k : 7, 0] = -(w + 3.3)
        flat[1 : k : 7, 0] = w + 3.3
        flat[2 : k : 7, 1] = -(h + 3.3)
        flat[3 : k : 7, 1] = h + 3.3
    mask = torch.randn(n, ho, wo, g * pts, generator=gen, dtype=torch.float64)
    return value, offset, mask


def _grads(fn, value, offset, mask):
    v, o, m = (t.clone().requires_grad_() for t in (value, offset, mask))
    out = fn(v, o, m)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    (out * weight).sum().backward()
    return out.detach(), v.grad, o.grad, m.grad


@pytest.mark.parametrize("integer", [False, True], ids=["fractional", "integer"])
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_core_matches_loop_oracle(case, integer):
    value, offset, mask = _inputs(case, n=2 if case is CASES[0] else 1, integer=integer)
    ours = _grads(lambda v, o, m: dcnv3_core(v, o, m, *case), value, offset, mask)
    ref = _grads(lambda v, o, m: _oracle(v, o, m, *case), value, offset, mask)
    for name, a, b in zip(("out", "value", "offset", "mask"), ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"{name} differs")


def test_core_exact_boundary_positions():
    # Samples exactly at x = -1, x = W (excluded: the strict rule) and x = W - 1 (kept).
    case = (1, 1, 1, 1, 0, 0, 1, 1, 1, 2, 1.0, False)
    value, _, _ = _inputs(case, h=3, w=4)
    offset = torch.zeros(1, 3, 4, 2, dtype=torch.float64)
    offset[0, 0, 0, 0] = -1.0  # x = -1
    offset[0, 0, 1, 0] = 3.0  # x = 4 = W
    offset[0, 0, 2, 0] = 1.0  # x = 3 = W - 1
    offset[0, 1, 0, 1] = -1.0  # y = -1
    mask = torch.ones(1, 3, 4, 1, dtype=torch.float64)
    ours = _grads(lambda v, o, m: dcnv3_core(v, o, m, *case), value, offset, mask)
    ref = _grads(lambda v, o, m: _oracle(v, o, m, *case), value, offset, mask)
    assert ours[0][0, 0, 0].abs().sum() == 0 and ours[0][0, 0, 1].abs().sum() == 0
    torch.testing.assert_close(ours[0][0, 0, 2], value[0, 0, 3])
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_core_gradcheck():
    case = (3, 3, 2, 1, 1, 0, 1, 2, 2, 2, 0.7, True)
    value, offset, mask = _inputs(case, h=4, w=6, seed=3)
    offset = offset.clamp(-2, 2) + 0.123  # away from integer kinks
    args = [t.requires_grad_() for t in (value, offset, mask)]
    assert torch.autograd.gradcheck(lambda v, o, m: dcnv3_core(v, o, m, *case), args)


def test_core_zero_offsets_are_a_grouped_box_filter():
    # offsets 0, mask 1: every group sums its 3x3 neighbourhood (zero padding).
    v = torch.randn(2, 5, 6, 8, dtype=torch.float64)
    out = dcnv3_core(v, v.new_zeros(2, 5, 6, 36), v.new_ones(2, 5, 6, 18), group=2)
    box = nn.functional.conv2d(v.permute(0, 3, 1, 2), v.new_ones(8, 1, 3, 3), padding=1,
                               groups=8).permute(0, 2, 3, 1)
    torch.testing.assert_close(out, box)


def test_core_float32_bf16_and_batch_chunk_consistency():
    case = CASES[1]
    value, offset, mask = _inputs(case, n=2, seed=5)
    ref = dcnv3_core(value, offset, mask, *case)
    out32 = dcnv3_core(value.float(), offset.float(), mask.float(), *case)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), ref, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = value.float().requires_grad_()
        out_bf = dcnv3_core(v.bfloat16(), offset.float(), mask.float(), *case)
    assert out_bf.dtype == torch.bfloat16
    torch.testing.assert_close(out_bf.double(), ref, rtol=0.05, atol=0.05)
    out_bf.float().sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all()
    # Each sample is independent of the others in the batch.
    torch.testing.assert_close(dcnv3_core(value[1:], offset[1:], mask[1:], *case), ref[1:])


def test_core_nonfinite_offsets_are_nan_only_where_they_are():
    case = CASES[0]
    value, offset, mask = _inputs(case, n=2)
    offset[0, 1, 2, 0] = float("nan")  # group 0, point 0, x
    offset[1, 0, 0, 2 * 9 + 1] = float("inf")  # group 1, point 0, y
    out = dcnv3_core(value, offset, mask, *case)
    bad = ~torch.isfinite(out)
    expect = torch.zeros_like(bad)
    expect[0, 1, 2, :3] = True
    expect[1, 0, 0, 3:] = True
    assert torch.equal(bad, expect)


def test_core_errors():
    v = torch.randn(1, 4, 4, 8)
    with pytest.raises(ValueError, match="not divisible by group=3"):
        dcnv3_core(v, v.new_zeros(1, 4, 4, 54), v.new_zeros(1, 4, 4, 27), group=3)
    with pytest.raises(ValueError, match=r"offset must have shape \(1, 4, 4, 36\)"):
        dcnv3_core(v, v.new_zeros(1, 4, 4, 18), v.new_zeros(1, 4, 4, 18), group=2)
    with pytest.raises(ValueError, match=r"mask must have shape"):
        dcnv3_core(v, v.new_zeros(1, 4, 4, 36), v.new_zeros(1, 4, 4, 9), group=2)
    with pytest.raises(ValueError, match="remove_center needs an odd kernel"):
        dcnv3_core(v, v, v, 2, 2, remove_center=True)


def test_unpack_offset_mask_layout():
    g, p = 2, 9
    om = torch.arange(1 * 1 * 1 * 56, dtype=torch.float32).view(1, 1, 1, 56)
    offset, mask = unpack_offset_mask(om, g, p)
    assert offset[0, 0, 0].tolist() == list(range(0, 18)) + list(range(27, 45))
    assert mask[0, 0, 0].tolist() == list(range(18, 27)) + list(range(45, 54))


def test_core_point_chunks_match_the_oracle(monkeypatch):
    import a2d2c.ops.dcn as dcn

    monkeypatch.setattr(dcn, "CHUNK_ELEMENTS", 450)  # 2 points per chunk (210 each), 5 chunks
    case = CASES[0]
    value, offset, mask = _inputs(case, seed=7)
    geo = dcn._Geometry(value, offset, case)
    assert 1 < len(geo.chunks) < 9
    ours = _grads(lambda v, o, m: dcnv3_core(v, o, m, *case), value, offset, mask)
    ref = _grads(lambda v, o, m: _oracle(v, o, m, *case), value, offset, mask)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_core_flop_count_is_internimages():
    from torch.utils.flop_counter import FlopCounterMode

    case = (3, 3, 2, 2, 1, 1, 1, 1, 2, 4, 1.0, True)
    value, offset, mask = (t.float() for t in _inputs(case, n=2))
    with FlopCounterMode(display=False) as counter:
        out = dcnv3_core(value, offset, mask, *case)
    n, ho, wo, c = out.shape
    assert counter.get_total_flops() == 2 * 5 * n * ho * wo * 8 * c  # 5·H·W·P·C MAdds


# ----------------------------------------------------------------------------- modules
def test_dcnv4_at_init_outputs_exactly_zero():
    torch.manual_seed(0)
    m = a2d2c.DCNv4(32, group=2)
    x = torch.randn(2, 6 * 5, 32, requires_grad=True)
    out = m(x, shape=(6, 5))
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))
    out.pow(2).sum().backward()  # zero output, zero loss gradient ...
    out = m(x, shape=(6, 5))
    (out * torch.randn_like(out)).sum().backward()
    assert m.offset_mask.weight.grad.abs().sum() > 0  # ... but the offsets can learn


def test_dcnv4_center_feature_scale_at_init_is_half_the_projection():
    torch.manual_seed(0)
    m = a2d2c.DCNv4(16, group=1, center_feature_scale=True).double()
    x = torch.randn(1, 9, 16, dtype=torch.float64)
    want = m.output_proj(0.5 * m.value_proj(x))
    torch.testing.assert_close(m(x), want)


def test_dcnv3_at_init_is_a_3x3_mean_of_the_projected_input():
    torch.manual_seed(0)
    m = a2d2c.DCNv3(12, group=3).double()
    for p in (m.dw_conv.weight, m.input_proj.bias, m.output_proj.bias):
        nn.init.normal_(p)  # nothing may depend on them being zero
    x = torch.randn(2, 5, 7, 12, dtype=torch.float64)
    v = m.input_proj(x).permute(0, 3, 1, 2)
    mean = nn.functional.avg_pool2d(v, 3, 1, 1, count_include_pad=True).permute(0, 2, 3, 1)
    torch.testing.assert_close(m(x), m.output_proj(mean))


def test_dcn_modules_batch1_and_state_dict_round_trip():
    import io

    for make, x, call in [
        (lambda: a2d2c.DCNv3(16, group=2, center_feature_scale=True, remove_center=True),
         torch.randn(3, 4, 5, 16), lambda m, t: m(t)),
        (lambda: a2d2c.DCNv4(32, group=2, dw_kernel_size=3, center_feature_scale=True),
         torch.randn(3, 20, 32), lambda m, t: m(t, (4, 5))),
    ]:
        torch.manual_seed(0)
        m = make()
        for p in m.parameters():  # leave the zero initialisation: offsets matter now
            nn.init.normal_(p, std=0.3)
        full = call(m, x)
        torch.testing.assert_close(call(m, x[1:2]), full[1:2], rtol=1e-5, atol=1e-5)
        buf = io.BytesIO()
        torch.save(m.state_dict(), buf)
        buf.seek(0)
        torch.manual_seed(1)
        other = make()
        other.load_state_dict(torch.load(buf, weights_only=True))
        assert torch.equal(call(other, x), full)


def test_dcn_module_errors():
    with pytest.raises(ValueError, match="channels=30 must be divisible by group=4"):
        a2d2c.DCNv3(30, group=4)
    with pytest.raises(ValueError, match="multiple of 16, got 64/8 = 8"):
        a2d2c.DCNv4(64, group=8)
    with pytest.raises(ValueError, match="pad must be"):
        a2d2c.DCNv3(16, group=1, pad=0)
    m = a2d2c.DCNv4(16, group=1)
    with pytest.raises(ValueError, match="not a square grid; pass shape"):
        m(torch.randn(1, 6, 16))
    with pytest.raises(ValueError, match=r"shape=\(2, 2\) has 4 positions"):
        m(torch.randn(1, 6, 16), (2, 2))
    with pytest.raises(ValueError, match=r"channels-last \(N, H, W, 16\)"):
        a2d2c.DCNv3(16, group=1)(torch.randn(1, 16, 4, 4))


# ----------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("name, millions", [
    ("internimage_t", 29.92), ("flash_internimage_t", 29.82),  # the official -T
    ("internimage_s", 50.08), ("flash_internimage_s", 50.07),  # published: 50M
    ("internimage_b", 97.46), ("flash_internimage_b", 97.45),  # published: 97M
])
def test_backbone_parameter_counts(name, millions):
    from a2d2c.profiling import count_params

    with torch.device("meta"):  # no memory, no initialisation cost
        model = a2d2c.create_model(name)
    assert round(count_params(model) / 1e6, 2) == millions


def test_backbone_stems_and_features_only():
    timm = pytest.importorskip("timm")
    for stem, size, reductions in [("imagenet", 64, [4, 8, 16, 32]), ("cifar", 32, [1, 2, 4, 8])]:
        m = timm.create_model("flash_internimage_t", features_only=True, stem=stem,
                              width_mult=0.25, depths=(1, 1, 1, 1))
        feats = m(torch.randn(1, 3, size, size))
        assert [size // f.shape[-1] for f in feats] == reductions
        assert [f.shape[1] for f in feats] == m.feature_info.channels() == [16, 32, 64, 128]


def test_narrow_flash_internimage_trains():
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 16, 16, generator=g), torch.randint(0, 5, (32,), generator=g)
    torch.manual_seed(0)
    model = a2d2c.create_model("flash_internimage_t", num_classes=5, stem="cifar",
                               width_mult=0.25, depths=(1, 1, 2, 1), drop_path_rate=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    losses = []
    for step in range(12):
        i = (step % 2) * 16
        loss = nn.functional.cross_entropy(model(x[i:i + 16]), y[i:i + 16])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses), losses
    assert sum(losses[-3:]) < 0.85 * sum(losses[:3]), losses
    offsets = [m.offset_mask.weight for m in model.modules() if isinstance(m, a2d2c.DCNv4)]
    assert all(w.abs().sum() > 0 for w in offsets)  # the sampling positions moved


# ----------------------------------------------------------------------------- memory, bench
def test_core_saves_only_its_inputs_unlike_the_grid_sample_route():
    # The grid_sample route saves P samples per output element for backward; ours keeps
    # value, offset and mask (independent check of the bench's naive route on the way).
    from a2d2c.tools.benchmark import naive_dcnv3_core, saved_activation_bytes

    case = (3, 3, 1, 1, 1, 1, 1, 1, 2, 16, 1.0, False)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(2, 12, 10, 32, generator=g, requires_grad=True)
    off = (2 * torch.randn(2, 12, 10, 36, generator=g)).requires_grad_()
    m = torch.randn(2, 12, 10, 18, generator=g, requires_grad=True)
    torch.testing.assert_close(dcnv3_core(v, off, m, *case), naive_dcnv3_core(v, off, m, *case),
                               rtol=1e-4, atol=1e-4)
    ours = saved_activation_bytes(lambda: dcnv3_core(v, off, m, *case))
    naive = saved_activation_bytes(lambda: naive_dcnv3_core(v, off, m, *case))
    inputs = sum(t.numel() * 4 for t in (v, off, m))
    assert ours == inputs
    assert naive >= inputs + 9 * v.numel() * 4  # the (N·G, D, Ho·Wo, P) samples


def test_bench_dcn_preset_runs_beside_the_3x3_conv():
    from a2d2c.tools.benchmark import DCN_VARIANTS, PRESETS, Case, run_benchmark

    assert all(c.extra_variants == DCN_VARIANTS for c in PRESETS["dcn"])
    case = Case("tiny", "layer", "train", 1, 16, 6, extra_variants=DCN_VARIANTS)
    rows, _ = run_benchmark([case], repeats=1, warmup=0, variants=["static"],
                            log=lambda s: None)
    assert [r["variant"] for r in rows] == ["static", *DCN_VARIANTS]
    for r in rows:
        assert math.isfinite(r["ratio"]) and math.isfinite(r["saved_mb"])


def test_profiler_counts_the_dcn_sampling_per_layer():
    from torch.utils.flop_counter import FlopCounterMode

    from a2d2c.profiling import count_madds

    model = a2d2c.create_model("flash_internimage_t", num_classes=10, stem="cifar",
                               width_mult=0.25, depths=(1, 1, 1, 1)).eval()
    report = count_madds(model, (3, 32, 32))
    assert report.summary() == "4x DCNv4 P=9"
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    sampling = counter.get_flop_counts()["Global"][torch.ops.a2d2c.dcnv3_core] // 2
    # stages: 16 channels at 32x32, 32 at 16x16, 64 at 8x8, 128 at 4x4; 9 points each
    assert sampling == sum(5 * s * s * 9 * c for c, s in ((16, 32), (32, 16), (64, 8), (128, 4)))
    assert report.madds == counter.get_total_flops() // 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_core_cuda_matches_the_oracle_and_bf16_autocast():
    case = CASES[2]
    value, offset, mask = _inputs(case, n=2, seed=11)
    ref = _grads(lambda v, o, m: _oracle(v, o, m, *case), value, offset, mask)
    ours = _grads(lambda v, o, m: dcnv3_core(v, o, m, *case),
                  *(t.cuda() for t in (value, offset, mask)))
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-10)
    model = a2d2c.create_model("flash_internimage_t", num_classes=5, stem="cifar",
                               width_mult=0.25, depths=(1, 1, 1, 1)).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 32, 32, device="cuda"))
    out.float().sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
