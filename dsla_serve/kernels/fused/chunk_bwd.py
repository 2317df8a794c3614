"""Backward kernels of the chunked DSLA: dq, dk, dv, dg1, dg2 and dmix for one chunk of one head.

Per state i (mix weight m_i, scale s, w_i = m_i s), with b the in-chunk cumulative log2-decays, B its
last row, h_i the state at the chunk start, dh_i the gradient of the state at the chunk end, and
D[t, s] = do_t . v_s for s <= t:

    dq_raw_i,t = s [ 2^b_t * (h_i do_t) + sum_{s<=t} D[t, s] 2^(b_t - b_s) k_s ]     (dq = sum_i m_i dq_raw_i)
    dk_i,s     = 2^(B - b_s) * (dh_i v_s) + w_i sum_{t>=s} D[t, s] 2^(b_t - b_s) q_t     (dk = sum_i dk_i)
    dv_s       = sum_t A[t, s] do_t + sum_i (k_s 2^(B_i - b_i,s)) dh_i,   A = sum_i m_i A_i (forward scores)
    dg_i,t     = sum_{r >= t in chunk} (m_i q_r dq_raw_i,r - k_r dk_i,r) + sum_v (S_i dS_i)[chunk end]
    dm_i       = sum over tokens and channels of q * dq_raw_i

The decayed sums use the same secondary chunking as `decayed_scores` (exponents span at most 8
tokens). `_dqdk_kernel` owns a K-tile of one chunk and head (full V), `_dv_kernel` a V-tile (full K);
dk and dv come out per query head and the caller sums GQA groups.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import LOG2E, SUB_CHUNK, chunk_coords, chunk_decays, decayed_scores, pow2, sub_chunk_ref
from .layout import ChunkLayout


@triton.jit
def _state_grads(b_q, b_k, b_v, b_do, d, g, h_start, dh_end, w, rows,
                 BT: tl.constexpr, BC: tl.constexpr, DT: tl.constexpr, G_FP32: tl.constexpr):
    """(dq_raw_i / s, dk_i) [BT, BK] fp32 of one state; d [BT, BT] = causal do_t . v_s in DT."""
    sub = rows // BC
    b, rel = chunk_decays(g, rows, BT, BC, DT, G_FP32)
    tot = tl.sum(g.to(tl.float32), axis=0) * LOG2E
    dq_in = tl.zeros(b.shape, dtype=tl.float32)
    dk_in = tl.zeros(b.shape, dtype=tl.float32)
    for i in range(BT // BC):  # a loop, not unrolled: one sub-chunk's tiles live at a time
        r_i = sub_chunk_ref(b, rows, i, BC)[None, :]
        kt = (b_k.to(tl.float32) * tl.exp2(tl.where(sub[:, None] <= i, r_i - b, float("-inf")))).to(DT)
        qt = (b_q.to(tl.float32) * tl.exp2(tl.where(sub[:, None] >= i, b - r_i, float("-inf")))).to(DT)
        dq_in += tl.where(sub[:, None] == i, tl.dot(d, kt), 0.0)
        dk_in += tl.where(sub[:, None] == i, tl.dot(tl.trans(d), qt), 0.0)
    dq = tl.exp2(rel) * dq_in + tl.exp2(b) * tl.dot(b_do, tl.trans(h_start))
    dk = w * tl.exp2(-rel) * dk_in + tl.exp2(tot[None, :] - b) * tl.dot(b_v, tl.trans(dh_end))
    return dq, dk


@triton.jit
def _reverse_cumsum(x):
    """sum_{r >= t} x_r over the rows of x [BT, BK]."""
    return tl.sum(x, axis=0)[None, :] - tl.cumsum(x, axis=0) + x


@triton.jit
def _dqdk_kernel(
    q, k, v, g1, g2, do, mix, h1, h2, dh1, dh2, dq, dk, dg1, dg2, dmix_part,
    cu_seqlens, chunk_indices, boundary_offsets, T, scale,
    H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, G_FP32: tl.constexpr,
):
    i_k, i_c, hq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hk = hq // (H // HK)
    n, c, bos, length, boff = chunk_coords(i_c, cu_seqlens, chunk_indices, boundary_offsets, T, BT, IS_VARLEN)
    dt = h1.dtype.element_ty
    m1 = tl.load(mix + hq * 2)
    m2 = tl.load(mix + hq * 2 + 1)

    rows = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    t = c * BT + rows
    m_t = t < length
    tok = bos + t
    m_tk = m_t[:, None] & m_k[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    qo = (tok * H + hq)[:, None] * K + o_k[None, :]
    b_q = tl.load(q + qo, mask=m_tk, other=0.0)
    b_k = tl.load(k + (tok * HK + hk)[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
    b_v = tl.load(v + (tok * HK + hk)[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(dt)
    b_do = tl.load(do + (tok * H + hq)[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(dt)
    d = tl.where(rows[:, None] >= rows[None, :], tl.dot(b_do, tl.trans(b_v)), 0.0).to(dt)

    m_kv = m_k[:, None] & m_v[None, :]
    start_off = ((boff + c) * H + hq) * K * V + o_k[:, None] * V + o_v[None, :]
    end_off = start_off + H * K * V

    # state 1
    dh_end = tl.load(dh1 + end_off, mask=m_kv, other=0.0).to(dt)
    dq1, dk1 = _state_grads(b_q, b_k, b_v, b_do, d, tl.load(g1 + qo, mask=m_tk, other=0.0),
                            tl.load(h1 + start_off, mask=m_kv, other=0.0).to(dt), dh_end,
                            m1 * scale, rows, BT, BC, dt, G_FP32)
    # d(loss)/d(total log-decay up to the chunk end) = sum_v S * dS there: every later chunk's part of dg
    bnd = tl.sum(tl.load(h1 + end_off, mask=m_kv, other=0.0).to(tl.float32) * dh_end.to(tl.float32), axis=1)
    qdq = b_q.to(tl.float32) * dq1
    tl.store(dg1 + qo, _reverse_cumsum(m1 * scale * qdq - b_k.to(tl.float32) * dk1) + bnd[None, :], mask=m_tk)
    dm1 = tl.sum(tl.sum(qdq, axis=1), axis=0) * scale
    b_dq = m1 * dq1
    b_dk = dk1

    # state 2
    dh_end = tl.load(dh2 + end_off, mask=m_kv, other=0.0).to(dt)
    dq2, dk2 = _state_grads(b_q, b_k, b_v, b_do, d, tl.load(g2 + qo, mask=m_tk, other=0.0),
                            tl.load(h2 + start_off, mask=m_kv, other=0.0).to(dt), dh_end,
                            m2 * scale, rows, BT, BC, dt, G_FP32)
    bnd = tl.sum(tl.load(h2 + end_off, mask=m_kv, other=0.0).to(tl.float32) * dh_end.to(tl.float32), axis=1)
    qdq = b_q.to(tl.float32) * dq2
    tl.store(dg2 + qo, _reverse_cumsum(m2 * scale * qdq - b_k.to(tl.float32) * dk2) + bnd[None, :], mask=m_tk)
    dm2 = tl.sum(tl.sum(qdq, axis=1), axis=0) * scale

    tl.store(dq + qo, ((b_dq + m2 * dq2) * scale).to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + qo, (b_dk + dk2).to(dk.dtype.element_ty), mask=m_tk)
    part = ((i_c * H + hq) * tl.num_programs(0) + i_k) * 2
    tl.store(dmix_part + part, dm1)
    tl.store(dmix_part + part + 1, dm2)


@triton.jit
def _dv_kernel(
    q, k, g1, g2, do, mix, dh1, dh2, dv,
    cu_seqlens, chunk_indices, boundary_offsets, T, scale,
    H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, G_FP32: tl.constexpr,
):
    i_v, i_c, hq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hk = hq // (H // HK)
    n, c, bos, length, boff = chunk_coords(i_c, cu_seqlens, chunk_indices, boundary_offsets, T, BT, IS_VARLEN)
    dt = dh1.dtype.element_ty
    w1 = tl.load(mix + hq * 2) * scale
    w2 = tl.load(mix + hq * 2 + 1) * scale

    rows = tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    t = c * BT + rows
    m_t = t < length
    tok = bos + t
    m_tv = m_t[:, None] & m_v[None, :]
    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    a = tl.zeros([BT, BT], dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BK)):  # K-tiles: scores and state terms are sums over K
        o_k = kb * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        qo = (tok * H + hq)[:, None] * K + o_k[None, :]
        b_q = tl.load(q + qo, mask=m_tk, other=0.0)
        b_k = tl.load(k + (tok * HK + hk)[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
        end_off = ((boff + c + 1) * H + hq) * K * V + o_k[:, None] * V + o_v[None, :]
        m_kv = m_k[:, None] & m_v[None, :]

        b_g = tl.load(g1 + qo, mask=m_tk, other=0.0)
        a1, b1 = decayed_scores(b_q, b_k, b_g, rows, BT, BC, dt, G_FP32)
        decay_to_end = tl.exp2(tl.sum(b_g.to(tl.float32), axis=0)[None, :] * LOG2E - b1)
        dh = tl.load(dh1 + end_off, mask=m_kv, other=0.0).to(dt)
        b_dv += tl.dot((b_k.to(tl.float32) * decay_to_end).to(dt), dh)
        b_g = tl.load(g2 + qo, mask=m_tk, other=0.0)
        a2, b2 = decayed_scores(b_q, b_k, b_g, rows, BT, BC, dt, G_FP32)
        decay_to_end = tl.exp2(tl.sum(b_g.to(tl.float32), axis=0)[None, :] * LOG2E - b2)
        dh = tl.load(dh2 + end_off, mask=m_kv, other=0.0).to(dt)
        b_dv += tl.dot((b_k.to(tl.float32) * decay_to_end).to(dt), dh)
        a += w1 * a1 + w2 * a2
    b_do = tl.load(do + (tok * H + hq)[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(dt)
    b_dv += tl.dot(tl.trans(a.to(dt)), b_do)
    tl.store(dv + (tok * H + hq)[:, None] * V + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_tv)


# Launch settings, from the sm_90 compile report (fewest spilled registers); benchmarks/kernels.py can
# sweep them on the GPU. dqdk_bk: K-tile of a dq/dk program; dv_bk / dv_bv: inner K-tile and V-tile of
# a dv program. num_stages=1: with triton 3.6 the pipelined (2-stage) dv kernel hit an illegal memory
# access for bf16, K=64 with GQA (2026-11-26, H100), the unpipelined one did not.
TUNING = {"dqdk_bk": 16, "dqdk_warps": 4, "dv_bk": 32, "dv_bv": 64, "dv_warps": 8, "num_stages": 1}


def chunk_backward(q, k, v, g1, g2, do, mix, h1, h2, dh1, dh2, scale: float, layout: ChunkLayout):
    """Gradients of the chunked DSLA from the forward boundary states h and their gradients dh.

    Args:
        q, g1, g2: [B*T, H, K]; k: [B*T, HK, K]; v: [B*T, HK, V]; do: [B*T, H, V]; mix: [H, 2] fp32.
        h1, h2, dh1, dh2: [NB, H, K, V] boundary states and state gradients.
    Returns:
        dq [B*T, H, K] in q's dtype; dk_h [B*T, H, K], dv_h [B*T, H, V] per query head (q's dtype
        without GQA, fp32 with); dg1, dg2 [B*T, H, K] fp32; dmix [H, 2] fp32.
    """
    TT, H, K = q.shape
    HK, V = k.shape[1], v.shape[2]
    grad_dtype = q.dtype if HK == H else torch.float32
    dq = torch.empty_like(q)
    dk = q.new_empty(TT, H, K, dtype=grad_dtype)
    dv = q.new_empty(TT, H, V, dtype=grad_dtype)
    dg1 = q.new_empty(TT, H, K, dtype=torch.float32)
    dg2 = torch.empty_like(dg1)
    bk = max(16, min(TUNING["dqdk_bk"], pow2(K)))
    nk = triton.cdiv(K, bk)
    dmix_part = q.new_empty(layout.num_chunks, H, nk, 2, dtype=torch.float32)
    cu, ci, boffs, T = layout.kernel_args()
    meta = dict(H=H, HK=HK, K=K, V=V, BT=layout.chunk_size, BC=SUB_CHUNK, IS_VARLEN=layout.is_varlen,
                G_FP32=g1.dtype == torch.float32, num_stages=TUNING["num_stages"])
    _dqdk_kernel[(nk, layout.num_chunks, H)](
        q, k, v, g1, g2, do, mix, h1, h2, dh1, dh2, dq, dk, dg1, dg2, dmix_part, cu, ci, boffs, T, scale,
        BK=bk, BV=pow2(V), num_warps=TUNING["dqdk_warps"], **meta)
    bv = max(16, min(TUNING["dv_bv"], pow2(V)))
    _dv_kernel[(triton.cdiv(V, bv), layout.num_chunks, H)](
        q, k, g1, g2, do, mix, dh1, dh2, dv, cu, ci, boffs, T, scale,
        BK=max(16, min(TUNING["dv_bk"], pow2(K))), BV=bv, num_warps=TUNING["dv_warps"], **meta)
    return dq, dk, dv, dg1, dg2, dmix_part.sum(dim=(0, 2))
