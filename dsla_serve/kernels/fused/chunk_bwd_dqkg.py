"""Backward through the boundary states, and the finish: dq, dk, dg1, dg2 for one chunk of one head.

Per state i, with S_i the state at the chunk's start, dS_i the gradient of the state at its end, b_i the
in-chunk inclusive cumulative log2-decay (`chunk_decays`) and B_i its value at the chunk's last token
(every exponent <= 0):

    dqr_i,t  = s 2^b_i,t (S_i do_t)                    (the read-out's part of dq, raw: without m_i)
    dk_i,s   = 2^(B_i - b_i,s) (dS_i v_s)              (the state update's part of dk)
    dg_i,t   = sum_{u >= t in the chunk} (m_i q_u dqr_i,u - k_u dk_i,u)  +  carry_i
    carry_i  = sum_v S_end,i * dS_i = 2^B_i sum_v (S_i * dS_i) + sum_s k_s dk_i,s

where dqr and dk in dg are the whole gradients (this kernel's parts plus the intra-chunk parts of
`chunk_bwd_intra`, which also brings its part of the sums as z_i), and the carry is the gradient of
the chunk's total decay from every later token (the identity needs only the chunk's start state).
One program per (K tile, chunk, head): 64-row tensor-core products over V tiles ([V, K]-tiles of the
states are transposed loads), the reverse sum as one masked matmul (`row_sums`). For gate logits
dg is multiplied by d logsigmoid(x) * scale / dx (the only read of the gates themselves).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import Gates, chunk_coords, chunk_totals, gate_grad_factor, pow2, row_sums
from .layout import ChunkLayout


@triton.jit
def _dqkg_kernel(
    q, k, v, b1, b2, g1, g2, do, mix, h1, h2, dh1, dh2, dq_part, dk_part, z1, z2, dq, dk, dg1, dg2, dmix_part,
    cu_seqlens, chunk_indices, boundary_offsets, T, scale, s_q, s_k, s_v, s_g, gate_scale,
    H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, GATE_LOGITS: tl.constexpr,
):
    i_k, i_c, hq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hk = hq // (H // HK)
    n, c, bos, length, boff = chunk_coords(i_c, cu_seqlens, chunk_indices, boundary_offsets, T, BT, IS_VARLEN)
    dt = h1.dtype.element_ty
    m1 = tl.load(mix + hq * 2)
    m2 = tl.load(mix + hq * 2 + 1)

    rows = tl.arange(0, BT)
    t = c * BT + rows
    m_t = t < length
    tok = bos + t
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    start = ((boff + c) * H + hq) * K * V
    end = start + H * K * V

    sd1 = tl.zeros([BT, BK], dtype=tl.float32)  # do S_1^T
    sd2 = tl.zeros([BT, BK], dtype=tl.float32)
    vd1 = tl.zeros([BT, BK], dtype=tl.float32)  # v dS_1^T
    vd2 = tl.zeros([BT, BK], dtype=tl.float32)
    cs1 = tl.zeros([BK], dtype=tl.float32)  # sum_v S_1 * dS_1
    cs2 = tl.zeros([BK], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        b_do = tl.load(do + (tok * H + hq)[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(dt)
        b_v = tl.load(v + tok[:, None] * s_v + hk * V + o_v[None, :], mask=m_tv, other=0.0).to(dt)
        st = o_k[None, :] * V + o_v[:, None]  # [V tile, K tile] of a [K, V] state: transposed load
        m_st = m_v[:, None] & m_k[None, :]
        s1 = tl.load(h1 + start + st, mask=m_st, other=0.0)
        s2 = tl.load(h2 + start + st, mask=m_st, other=0.0)
        d1 = tl.load(dh1 + end + st, mask=m_st, other=0.0)
        d2 = tl.load(dh2 + end + st, mask=m_st, other=0.0)
        sd1 = tl.dot(b_do, s1.to(dt), sd1)
        sd2 = tl.dot(b_do, s2.to(dt), sd2)
        vd1 = tl.dot(b_v, d1.to(dt), vd1)
        vd2 = tl.dot(b_v, d2.to(dt), vd2)
        cs1 += tl.sum(s1.to(tl.float32) * d1.to(tl.float32), axis=0)
        cs2 += tl.sum(s2.to(tl.float32) * d2.to(tl.float32), axis=0)

    out = (tok * H + hq)[:, None] * K + o_k[None, :]
    e1 = tl.load(b1 + out, mask=m_tk, other=0.0)
    e2 = tl.load(b2 + out, mask=m_tk, other=0.0)
    tot1, tot2 = chunk_totals(b1, b2, bos, c, length, hq, o_k, H, K, BT)
    dq1 = (scale * tl.exp2(e1)) * sd1
    dq2 = (scale * tl.exp2(e2)) * sd2
    dk1 = tl.exp2(tot1[None, :] - e1) * vd1  # rows past the end: vd = 0, factor <= 1
    dk2 = tl.exp2(tot2[None, :] - e2) * vd2

    b_q = tl.load(q + tok[:, None] * s_q + hq * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
    b_k = tl.load(k + tok[:, None] * s_k + hk * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
    b_dq = tl.load(dq_part + out, mask=m_tk, other=0.0) + m1 * dq1 + m2 * dq2
    tl.store(dq + out, b_dq.to(dq.dtype.element_ty), mask=m_tk)
    b_dk = tl.load(dk_part + out, mask=m_tk, other=0.0) + dk1 + dk2
    tl.store(dk + out, b_dk.to(dk.dtype.element_ty), mask=m_tk)

    after_or_at = rows[None, :] >= rows[:, None]  # [t, u]: u >= t
    x1 = tl.load(z1 + out, mask=m_tk, other=0.0) + m1 * b_q * dq1 - b_k * dk1
    x2 = tl.load(z2 + out, mask=m_tk, other=0.0) + m2 * b_q * dq2 - b_k * dk2
    carry1 = tl.exp2(tot1) * cs1 + tl.sum(b_k * dk1, axis=0)
    carry2 = tl.exp2(tot2) * cs2 + tl.sum(b_k * dk2, axis=0)
    b_dg1 = carry1[None, :] + row_sums(after_or_at, x1)
    b_dg2 = carry2[None, :] + row_sums(after_or_at, x2)
    if GATE_LOGITS:
        gq = tok[:, None] * s_g + hq * K + o_k[None, :]
        b_dg1 = b_dg1 * gate_grad_factor(g1 + gq, m_tk, gate_scale)
        b_dg2 = b_dg2 * gate_grad_factor(g2 + gq, m_tk, gate_scale)
    tl.store(dg1 + out, b_dg1.to(dg1.dtype.element_ty), mask=m_tk)
    tl.store(dg2 + out, b_dg2.to(dg2.dtype.element_ty), mask=m_tk)
    part = ((i_c * H + hq) * tl.num_programs(0) + i_k) * 2
    tl.store(dmix_part + part, tl.sum(tl.sum(b_q * dq1, axis=1), axis=0))
    tl.store(dmix_part + part + 1, tl.sum(tl.sum(b_q * dq2, axis=1), axis=0))


# Launch settings; benchmarks/kernels.py sweeps them on the GPU. bk: K tile (four [64, bk] fp32
# accumulators), bv: the value tile of the loop over V.
TUNING = {"bk": 32, "bv": 64, "num_warps": 4, "num_stages": 2}


def value_tile(V: int) -> int:
    """The V tile: TUNING's, but at most half the padded V, so the loop over V runs at least twice.
    With a single iteration (bk 32 < K = V = 64) triton 3.6 on sm_90 miscompiles this kernel: an
    illegal memory access with 2 stages, wrong dg with 1 (H100, 2026-12-07); bv 32 or bk 64 at the same
    shape agree with the PyTorch form (benchmarks/RESULTS.md)."""
    return max(16, min(TUNING["bv"], pow2(V) // 2))


def chunk_dqkg(q, k, v, b1, b2, g1, g2, gates: Gates, do, mix, h1, h2, dh1, dh2, dq_part, dk_part, z1, z2,
               scale: float, layout: ChunkLayout, dk_dtype):
    """dq, dk (per query head), dg1, dg2 and the states' dmix partial sums.

    Args:
        q, g1, g2: [B*T, H, K]; k: [B*T, HK, K]; v: [B*T, HK, V] (any token strides; g as `gates` says,
            read only for the gate-logit factor of dg); b1, b2: [B*T, H, K] fp32 cumulative log2-decays;
            do: [B*T, H, V] contiguous; mix: [H, 2] fp32; h1, h2 / dh1, dh2: [NB, H, K, V] boundary
            states and their gradients; dq_part, dk_part, z1, z2: `chunk_bwd_intra`'s outputs.
    Returns:
        dq [B*T, H, K] in q's dtype, dk [B*T, H, K] in `dk_dtype`, dg1, dg2 [B*T, H, K] in g's dtype,
        dmix_part [H, 2] fp32.
    """
    TT, H, K = g1.shape
    HK, V = k.shape[1], v.shape[2]
    dq = g1.new_empty(TT, H, K, dtype=q.dtype)
    dk = g1.new_empty(TT, H, K, dtype=dk_dtype)
    dg1 = g1.new_empty(TT, H, K, dtype=g1.dtype)
    dg2 = g1.new_empty(TT, H, K, dtype=g2.dtype)
    bk, bv = min(TUNING["bk"], pow2(K)), value_tile(V)
    nk = triton.cdiv(K, bk)
    dmix_part = g1.new_empty(layout.num_chunks, H, nk, 2, dtype=torch.float32)
    cu, ci, boffs, T = layout.kernel_args()
    _dqkg_kernel[(nk, layout.num_chunks, H)](
        q, k, v, b1, b2, g1, g2, do, mix, h1, h2, dh1, dh2, dq_part, dk_part, z1, z2, dq, dk, dg1, dg2, dmix_part,
        cu, ci, boffs, T, scale, q.stride(0), k.stride(0), v.stride(0), g1.stride(0), gates.scale,
        H=H, HK=HK, K=K, V=V, BT=layout.chunk_size, BK=bk, BV=bv, IS_VARLEN=layout.is_varlen,
        GATE_LOGITS=gates.logits,
        num_warps=TUNING["num_warps"], num_stages=TUNING["num_stages"])
    return dq, dk, dg1, dg2, dmix_part.sum(dim=(0, 2))
