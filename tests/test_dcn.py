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
