"""The float64 loop oracle of ``mixed_conv2d`` (SPEC §5), shared by its test modules.

Every per-sample kernel ``W̃[b][o,c,i,j] = Σ_k a[b,k,o,i,j] W_k[o,c,i,j]`` is formed by
explicit loops over the coefficient's broadcast; the input channels are scaled, every
output position is a dot product with its zero-padded input patch, then the output scale
and the bias (``Σ_k a[b,k,o] b_k[o]``, per sample or static) are applied. It shares no
code with the op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def full_coeff(coeff, b, k, o, kh, kw):
    """``coeff`` as ``(B, K, O, kh, kw)``, broadcast by its documented shape rules."""
    out = torch.zeros(b, k, o, kh, kw, dtype=coeff.dtype)
    for bi in range(b):
        for ki in range(k):
            for oi in range(o):
                for i in range(kh):
                    for j in range(kw):
                        src = min(bi, coeff.shape[0] - 1)
                        if coeff.dim() == 2:
                            v = coeff[src, ki]
                        elif coeff.dim() == 3:
                            v = coeff[src, ki, min(oi, coeff.shape[2] - 1)]
                        elif coeff.dim() == 4:
                            v = coeff[src, ki, min(i, coeff.shape[2] - 1),
                                      min(j, coeff.shape[3] - 1)]
                        else:
                            v = coeff[src, ki, min(oi, coeff.shape[2] - 1),
                                      min(i, coeff.shape[3] - 1), min(j, coeff.shape[4] - 1)]
                        out[bi, ki, oi, i, j] = v
    return out


def oracle(x, weight, coeff, bias, stride, padding, dilation, groups, in_scale, out_scale):
    b, _, h, w = x.shape
    k, o, cg, kh, kw = weight.shape
    a = full_coeff(coeff, b, k, o, kh, kw)
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = F.pad(x, (pw, pw, ph, ph))
    og = o // groups
    rows = []
    for bi in range(b):
        xs = xp[bi] if in_scale is None else xp[bi] * in_scale[bi][:, None, None]
        chans = []
        for oi in range(o):
            kern = sum(a[bi, ki, oi] * weight[ki, oi] for ki in range(k))  # (Cg, kh, kw)
            g = oi // og
            xg = xs[g * cg:(g + 1) * cg]
            vals = []
            for yy in range(ho):
                for xx in range(wo):
                    patch = xg[:, yy * sh:yy * sh + dh * (kh - 1) + 1:dh,
                               xx * sw:xx * sw + dw * (kw - 1) + 1:dw]
                    vals.append((patch * kern).sum())
            ch = torch.stack(vals).view(ho, wo)
            if out_scale is not None:
                ch = ch * out_scale[bi, oi]
            if bias is not None:
                if bias.shape == (k, o):
                    ch = ch + sum(a[bi, ki, oi, 0, 0] * bias[ki, oi] for ki in range(k))
                elif bias.dim() == 1:
                    ch = ch + bias[oi]
                else:
                    ch = ch + bias[min(bi, bias.shape[0] - 1), oi, 0, 0]
            chans.append(ch)
        rows.append(torch.stack(chans))
    return torch.stack(rows)
