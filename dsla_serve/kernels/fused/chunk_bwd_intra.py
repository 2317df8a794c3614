"""Backward of the score kernel: the intra-chunk parts of dq and dk from dA, for one sub-chunk of rows.

With dA[t, s] = do_t . v_s (`chunk_bwd_dv`), per state i (mix m_i, scale s, b_i the in-chunk cumulative
log2-decay):

    dqr_i,t = s sum_{s' <= t} dA[t, s'] k_s' 2^(b_i,t - b_i,s')       (raw: without m_i)
    dk_i,s  = s m_i sum_{t >= s} dA[t, s] q_t 2^(b_i,t - b_i,s)

One single-warp program per (16-row sub-chunk, K tile, chunk, head) computes both for its rows, as
16-row tensor-core products with every decay factor bounded by a reference row r, like the forward's
`chunk_scores` (b read from `chunk_decays`):
- dq from earlier sub-chunks: r = the last row before the program's sub-chunk; dk from later ones:
  r = the program's last row; so both factors 2^(b_t - b_r) and 2^(b_r - b_s) are <= 1;
- its own sub-chunk: r = the middle row (each exponent spans at most 8 tokens of decay); dA is
  already causal.
It writes, per element of its rows (fp32, [B*T, H, K]): dq_part = sum_i m_i dqr_i, dk_part =
sum_i dk_i, and z_i = m_i q dqr_i - k dk_i (the terms of dg_i's reverse sum), plus the dmix partial
sums sum q dqr_i; `chunk_bwd_dqkg` adds the state parts and finishes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import SUB_CHUNK, chunk_coords, pow2
from .layout import ChunkLayout


@triton.jit
def _dqk_intra_kernel(
    q, k, b1, b2, mix, dA, dq, dk, z1, z2, dmix_part,
    cu_seqlens, chunk_indices, boundary_offsets, T, scale, s_q, s_k,
    H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    IS_VARLEN: tl.constexpr, DOT_BF16: tl.constexpr,
):
    i_p, i_c, hq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    NK = tl.cdiv(K, BK)
    i_i = i_p // NK
    i_k = i_p % NK
    hk = hq // (H // HK)
    n, c, bos, length, boff = chunk_coords(i_c, cu_seqlens, chunk_indices, boundary_offsets, T, BT, IS_VARLEN)
    dt = tl.bfloat16 if DOT_BF16 else tl.float32
    m1 = tl.load(mix + hq * 2)
    m2 = tl.load(mix + hq * 2 + 1)

    r = tl.arange(0, BC)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    t_i = c * BT + i_i * BC + r
    m_i = t_i < length
    tok_i = bos + t_i
    m_ik = m_i[:, None] & m_k[None, :]
    out = (tok_i * H + hq)[:, None] * K + o_k[None, :]
    e1 = tl.load(b1 + out, mask=m_ik, other=0.0)  # b at the program's rows
    e2 = tl.load(b2 + out, mask=m_ik, other=0.0)
    # reference rows (module doc), never past the sequence's last token
    last = length - 1 - c * BT
    at_mid = ((bos + c * BT + tl.minimum(i_i * BC + BC // 2 - 1, last)) * H + hq) * K + o_k
    at_before = ((bos + c * BT + tl.minimum(i_i * BC - 1, last)) * H + hq) * K + o_k
    at_end = ((bos + c * BT + tl.minimum(i_i * BC + BC - 1, last)) * H + hq) * K + o_k
    mid1 = tl.load(b1 + at_mid, mask=m_k, other=0.0)
    mid2 = tl.load(b2 + at_mid, mask=m_k, other=0.0)
    m_pre = m_k & ((o_k * 0 + i_i) > 0)  # the first sub-chunk has no row before it
    pre1 = tl.load(b1 + at_before, mask=m_pre, other=0.0)
    pre2 = tl.load(b2 + at_before, mask=m_pre, other=0.0)
    end1 = tl.load(b1 + at_end, mask=m_k, other=0.0)
    end2 = tl.load(b2 + at_end, mask=m_k, other=0.0)
    da_rows = dA + (tok_i * H + hq) * BT  # row t of dA holds dA[t, s] for the chunk's s

    # dq from the keys of earlier sub-chunks j: key side 2^(b_pre - b_s), query side 2^(b_t - b_pre)
    dq1 = tl.zeros([BC, BK], dtype=tl.float32)
    dq2 = tl.zeros([BC, BK], dtype=tl.float32)
    for j in range(0, i_i):
        tok_j = bos + c * BT + j * BC + r
        m_jk = ((c * BT + j * BC + r) < length)[:, None] & m_k[None, :]
        kj = tl.load(k + tok_j[:, None] * s_k + hk * K + o_k[None, :], mask=m_jk, other=0.0).to(tl.float32)
        bj = (tok_j * H + hq)[:, None] * K + o_k[None, :]
        kf1 = (kj * tl.exp2(tl.where(m_jk, pre1[None, :] - tl.load(b1 + bj, mask=m_jk, other=0.0), 0.0))).to(dt)
        kf2 = (kj * tl.exp2(tl.where(m_jk, pre2[None, :] - tl.load(b2 + bj, mask=m_jk, other=0.0), 0.0))).to(dt)
        a = tl.load(da_rows[:, None] + j * BC + r[None, :], mask=m_i[:, None], other=0.0).to(dt)
        dq1 = tl.dot(a, kf1, dq1)
        dq2 = tl.dot(a, kf2, dq2)
    # the program's own sub-chunk: reference at the middle row (rows past the end: exponent 0)
    up1 = tl.where(m_ik, e1 - mid1[None, :], 0.0)
    up2 = tl.where(m_ik, e2 - mid2[None, :], 0.0)
    b_k = tl.load(k + tok_i[:, None] * s_k + hk * K + o_k[None, :], mask=m_ik, other=0.0).to(tl.float32)
    a = tl.load(da_rows[:, None] + i_i * BC + r[None, :], mask=m_i[:, None], other=0.0).to(dt)  # diagonal
    dq1 = dq1 * tl.exp2(tl.where(m_ik, e1 - pre1[None, :], 0.0)) + tl.exp2(up1) * tl.dot(a, (b_k * tl.exp2(-up1)).to(dt))
    dq2 = dq2 * tl.exp2(tl.where(m_ik, e2 - pre2[None, :], 0.0)) + tl.exp2(up2) * tl.dot(a, (b_k * tl.exp2(-up2)).to(dt))
    dq1 = dq1 * scale
    dq2 = dq2 * scale
    tl.store(dq + out, m1 * dq1 + m2 * dq2, mask=m_ik)
    b_q = tl.load(q + tok_i[:, None] * s_q + hq * K + o_k[None, :], mask=m_ik, other=0.0).to(tl.float32)
    part = ((i_c * H + hq) * tl.num_programs(0) + i_p) * 2
    tl.store(dmix_part + part, tl.sum(tl.sum(b_q * dq1, axis=1), axis=0))
    tl.store(dmix_part + part + 1, tl.sum(tl.sum(b_q * dq2, axis=1), axis=0))
    zq1 = (m1 * b_q) * dq1  # dg's query terms; dq1, dq2 are not needed past here
    zq2 = (m2 * b_q) * dq2

    # dk from the queries of later sub-chunks j: query side 2^(b_t - b_end), key side 2^(b_end - b_s)
    dk1 = tl.zeros([BC, BK], dtype=tl.float32)
    dk2 = tl.zeros([BC, BK], dtype=tl.float32)
    for j in range(i_i + 1, BT // BC):
        t_j = c * BT + j * BC + r
        m_j = t_j < length
        tok_j = bos + t_j
        m_jk = m_j[:, None] & m_k[None, :]
        qj = tl.load(q + tok_j[:, None] * s_q + hq * K + o_k[None, :], mask=m_jk, other=0.0).to(tl.float32)
        bj = (tok_j * H + hq)[:, None] * K + o_k[None, :]
        qf1 = (qj * tl.exp2(tl.where(m_jk, tl.load(b1 + bj, mask=m_jk, other=0.0) - end1[None, :], 0.0))).to(dt)
        qf2 = (qj * tl.exp2(tl.where(m_jk, tl.load(b2 + bj, mask=m_jk, other=0.0) - end2[None, :], 0.0))).to(dt)
        a_t = tl.load(dA + (tok_j * H + hq)[None, :] * BT + i_i * BC + r[:, None], mask=m_j[None, :],
                      other=0.0).to(dt)  # [s, t] = dA[t, s]
        dk1 = tl.dot(a_t, qf1, dk1)
        dk2 = tl.dot(a_t, qf2, dk2)
    a_t = tl.load(dA + (tok_i * H + hq)[None, :] * BT + i_i * BC + r[:, None], mask=m_i[None, :],
                  other=0.0).to(dt)  # diagonal, transposed
    dk1 = (dk1 * tl.exp2(tl.where(m_ik, end1[None, :] - e1, 0.0))
           + tl.exp2(-up1) * tl.dot(a_t, (b_q * tl.exp2(up1)).to(dt))) * (scale * m1)
    dk2 = (dk2 * tl.exp2(tl.where(m_ik, end2[None, :] - e2, 0.0))
           + tl.exp2(-up2) * tl.dot(a_t, (b_q * tl.exp2(up2)).to(dt))) * (scale * m2)
    tl.store(dk + out, dk1 + dk2, mask=m_ik)
    tl.store(z1 + out, zq1 - b_k * dk1, mask=m_ik)
    tl.store(z2 + out, zq2 - b_k * dk2, mask=m_ik)


# Launch settings; benchmarks/kernels.py sweeps them on the GPU. One warp per program, as the forward's
# score kernel (its layout conversions and reductions then need no barrier across warps). sm_90 compile
# report (benchmarks/compile_report.py, triton 3.9, bf16 logits): bk 16 242-244 registers, no spills;
# bk 32 spills 328 bytes at one warp (237 registers, none spilled, at two).
TUNING = {"bk": 16, "num_warps": 1, "num_stages": 2}


def chunk_dqk_intra(q, k, b1, b2, mix, dA, scale: float, layout: ChunkLayout):
    """Intra-chunk parts of dq, dk and dg's terms.

    Args:
        q: [B*T, H, K]; k: [B*T, HK, K] (any token strides); b1, b2: [B*T, H, K] fp32 cumulative
            log2-decays (`chunk_decays`); mix: [H, 2] fp32; dA: [B*T, H, chunk] (`chunk_dv`).
    Returns:
        dq_part, dk_part, z1, z2: [B*T, H, K] fp32 (see the module doc); dmix_part [H, 2] fp32.
    """
    TT, H, K = b1.shape
    HK = k.shape[1]
    BT = layout.chunk_size
    parts = [torch.empty_like(b1) for _ in range(4)]
    bk = min(TUNING["bk"], pow2(K))
    programs = (BT // SUB_CHUNK) * triton.cdiv(K, bk)
    dmix_part = b1.new_empty(layout.num_chunks, H, programs, 2, dtype=torch.float32)
    cu, ci, boffs, T = layout.kernel_args()
    _dqk_intra_kernel[(programs, layout.num_chunks, H)](
        q, k, b1, b2, mix, dA, *parts, dmix_part, cu, ci, boffs, T, scale, q.stride(0), k.stride(0),
        H=H, HK=HK, K=K, BT=BT, BC=SUB_CHUNK, BK=bk, IS_VARLEN=layout.is_varlen,
        DOT_BF16=dA.dtype == torch.bfloat16,
        num_warps=TUNING["num_warps"], num_stages=TUNING["num_stages"])
    return (*parts, dmix_part.sum(dim=(0, 2)))
