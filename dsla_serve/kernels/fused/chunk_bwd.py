"""Backward kernels of the chunked DSLA: dq, dk, dv, dg1, dg2 and dmix for one chunk of one head.

Notation per state i (mix weight m_i, scale s), in-sub-chunk cumulative log2-decays b with reference
r (middle row), e+ = 2^(b - r), e- = 2^(r - b), G = b at the last row; S_i the forward state at the
sub-chunk's start, dS_i the gradient with respect to the state at its end:

    dq_t   = sum_i m_i s [ (2^b_t * (S_i do_t)) + e+_t * sum_{s<=t} (do_t . v_s) k_s e-_s ]     (forward walk)
    dk_s,i = 2^(G - b_s) * (dS_i v_s) + m_i s e-_s * sum_{t>=s} (v_s . do_t) q_t e+_t        (reverse walk)
    dv_s   = sum_t A[t, s] do_t + sum_i (k_s 2^(G - b_s)) dS_i,   A = sum_i m_i s (q e+)(k e-)^T
    dg_i   = reverse cumsum over the chunk of (m_i q * dq_raw_i - k * dk_i)
             + sum_v (S_i * dS_i) at the chunk's end boundary
    dm_i   = sum over tokens and channels of q * dq_raw_i    (dq_raw_i: dq of state i without m_i)

Three kernels: `_dq_kernel` (forward walk over a K-tile, full V; also writes m_i q dq_raw_i into the
dg buffers and dmix partial sums), `_dk_kernel` (reverse walk over a K-tile; finishes dg), and
`_dv_kernel` (reverse walk over a V-tile, full K). dk and dv come out per query head; GQA groups are
summed by the caller.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import LOG2E, SUB_CHUNK, chunk_coords, pow2, sub_chunk_decays
from .layout import ChunkLayout


@triton.jit
def _dq_kernel(
    q, k, v, g1, g2, do, mix, h1, h2, dq, wq1, wq2, dmix_part,
    cu_seqlens, chunk_indices, boundary_offsets, T, scale,
    H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    i_k, i_c, hq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hk = hq // (H // HK)
    n, c, bos, length, boff = chunk_coords(i_c, cu_seqlens, chunk_indices, boundary_offsets, T, BT, IS_VARLEN)
    dt = h1.dtype.element_ty
    m1 = tl.load(mix + hq * 2)
    m2 = tl.load(mix + hq * 2 + 1)

    o_k = i_k * BK + tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    state_off = ((boff + c) * H + hq) * K * V + o_k[:, None] * V + o_v[None, :]
    m_kv = m_k[:, None] & m_v[None, :]
    s1 = tl.load(h1 + state_off, mask=m_kv, other=0.0).to(tl.float32)
    s2 = tl.load(h2 + state_off, mask=m_kv, other=0.0).to(tl.float32)

    rows = tl.arange(0, BC)
    causal = rows[:, None] >= rows[None, :]
    dm1 = tl.zeros([BK], dtype=tl.float32)
    dm2 = tl.zeros([BK], dtype=tl.float32)
    for i in range(0, BT // BC):
        t = c * BT + i * BC + rows
        m_t = t < length
        tok = bos + t
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        qo = (tok * H + hq)[:, None] * K + o_k[None, :]
        b_q = tl.load(q + qo, mask=m_tk, other=0.0).to(tl.float32)
        b_k = tl.load(k + (tok * HK + hk)[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_v = tl.load(v + (tok * HK + hk)[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(dt)
        b_do = tl.load(do + (tok * H + hq)[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(dt)
        b_g1 = tl.load(g1 + qo, mask=m_tk, other=0.0).to(tl.float32) * LOG2E
        b_g2 = tl.load(g2 + qo, mask=m_tk, other=0.0).to(tl.float32) * LOG2E
        ep1, en1, r1, tot1 = sub_chunk_decays(b_g1, rows, BC)
        ep2, en2, r2, tot2 = sub_chunk_decays(b_g2, rows, BC)

        d = tl.where(causal, tl.dot(b_do, tl.trans(b_v)), 0.0).to(dt)  # [t, s] = do_t . v_s
        kn1 = b_k * en1
        kn2 = b_k * en2
        dq1 = ep1 * (tl.dot(d, kn1.to(dt)) + tl.exp2(r1)[None, :] * tl.dot(b_do, tl.trans(s1.to(dt)))) * scale
        dq2 = ep2 * (tl.dot(d, kn2.to(dt)) + tl.exp2(r2)[None, :] * tl.dot(b_do, tl.trans(s2.to(dt)))) * scale
        tl.store(dq + qo, (m1 * dq1 + m2 * dq2).to(dq.dtype.element_ty), mask=m_tk)
        tl.store(wq1 + qo, m1 * b_q * dq1, mask=m_tk)
        tl.store(wq2 + qo, m2 * b_q * dq2, mask=m_tk)
        dm1 += tl.sum(b_q * dq1, axis=0)
        dm2 += tl.sum(b_q * dq2, axis=0)

        s1 = s1 * tl.exp2(tot1)[:, None] + tl.dot(tl.trans((kn1 * tl.exp2(tot1 - r1)[None, :]).to(dt)), b_v)
        s2 = s2 * tl.exp2(tot2)[:, None] + tl.dot(tl.trans((kn2 * tl.exp2(tot2 - r2)[None, :]).to(dt)), b_v)

    part = ((i_c * H + hq) * tl.num_programs(0) + i_k) * 2
    tl.store(dmix_part + part, tl.sum(dm1, axis=0))
    tl.store(dmix_part + part + 1, tl.sum(dm2, axis=0))


@triton.jit
def _dk_kernel(
    q, k, v, g1, g2, do, mix, h1, h2, dh1, dh2, dk, dg1, dg2,
    cu_seqlens, chunk_indices, boundary_offsets, T, scale,
    H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    """dk (per query head) and dg; dg1/dg2 hold m_i q dq_raw_i from `_dq_kernel` on entry."""
    i_k, i_c, hq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hk = hq // (H // HK)
    n, c, bos, length, boff = chunk_coords(i_c, cu_seqlens, chunk_indices, boundary_offsets, T, BT, IS_VARLEN)
    dt = h1.dtype.element_ty
    w1 = tl.load(mix + hq * 2) * scale
    w2 = tl.load(mix + hq * 2 + 1) * scale

    o_k = i_k * BK + tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    end_off = ((boff + c + 1) * H + hq) * K * V + o_k[:, None] * V + o_v[None, :]
    ds1 = tl.load(dh1 + end_off, mask=m_kv, other=0.0).to(tl.float32)
    ds2 = tl.load(dh2 + end_off, mask=m_kv, other=0.0).to(tl.float32)
    # d(loss)/d(total log-decay up to the chunk end) = sum_v S * dS there: the part of dg coming from
    # every later chunk, shared by all tokens of this chunk.
    carry1 = tl.sum(tl.load(h1 + end_off, mask=m_kv, other=0.0).to(tl.float32) * ds1, axis=1)
    carry2 = tl.sum(tl.load(h2 + end_off, mask=m_kv, other=0.0).to(tl.float32) * ds2, axis=1)

    rows = tl.arange(0, BC)
    causal_t = rows[:, None] <= rows[None, :]  # [s, t]: t >= s
    for ii in range(0, BT // BC):
        i = BT // BC - 1 - ii
        t = c * BT + i * BC + rows
        m_t = t < length
        tok = bos + t
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        qo = (tok * H + hq)[:, None] * K + o_k[None, :]
        b_q = tl.load(q + qo, mask=m_tk, other=0.0).to(tl.float32)
        b_k = tl.load(k + (tok * HK + hk)[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_v = tl.load(v + (tok * HK + hk)[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(dt)
        b_do = tl.load(do + (tok * H + hq)[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(dt)
        b_g1 = tl.load(g1 + qo, mask=m_tk, other=0.0).to(tl.float32) * LOG2E
        b_g2 = tl.load(g2 + qo, mask=m_tk, other=0.0).to(tl.float32) * LOG2E
        ep1, en1, r1, tot1 = sub_chunk_decays(b_g1, rows, BC)
        ep2, en2, r2, tot2 = sub_chunk_decays(b_g2, rows, BC)

        e = tl.where(causal_t, tl.dot(b_v, tl.trans(b_do)), 0.0).to(dt)  # [s, t] = v_s . do_t
        qp1 = b_q * ep1
        qp2 = b_q * ep2
        dk1 = en1 * (w1 * tl.dot(e, qp1.to(dt)) + tl.exp2(tot1 - r1)[None, :] * tl.dot(b_v, tl.trans(ds1.to(dt))))
        dk2 = en2 * (w2 * tl.dot(e, qp2.to(dt)) + tl.exp2(tot2 - r2)[None, :] * tl.dot(b_v, tl.trans(ds2.to(dt))))
        tl.store(dk + qo, (dk1 + dk2).to(dk.dtype.element_ty), mask=m_tk)

        x1 = tl.load(dg1 + qo, mask=m_tk, other=0.0) - b_k * dk1
        x2 = tl.load(dg2 + qo, mask=m_tk, other=0.0) - b_k * dk2
        sum1 = tl.sum(x1, axis=0)
        sum2 = tl.sum(x2, axis=0)
        # reverse cumulative sum inside the sub-chunk: total - inclusive prefix + own value
        tl.store(dg1 + qo, carry1[None, :] + sum1[None, :] - tl.cumsum(x1, axis=0) + x1, mask=m_tk)
        tl.store(dg2 + qo, carry2[None, :] + sum2[None, :] - tl.cumsum(x2, axis=0) + x2, mask=m_tk)
        carry1 += sum1
        carry2 += sum2

        ds1 = ds1 * tl.exp2(tot1)[:, None] + tl.dot(tl.trans((qp1 * (w1 * tl.exp2(r1))[None, :]).to(dt)), b_do)
        ds2 = ds2 * tl.exp2(tot2)[:, None] + tl.dot(tl.trans((qp2 * (w2 * tl.exp2(r2))[None, :]).to(dt)), b_do)


@triton.jit
def _dv_kernel(
    q, k, g1, g2, do, mix, dh1, dh2, dv,
    cu_seqlens, chunk_indices, boundary_offsets, T, scale,
    H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    i_v, i_c, hq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hk = hq // (H // HK)
    n, c, bos, length, boff = chunk_coords(i_c, cu_seqlens, chunk_indices, boundary_offsets, T, BT, IS_VARLEN)
    dt = dh1.dtype.element_ty
    w1 = tl.load(mix + hq * 2) * scale
    w2 = tl.load(mix + hq * 2 + 1) * scale

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    end_off = ((boff + c + 1) * H + hq) * K * V + o_k[:, None] * V + o_v[None, :]
    ds1 = tl.load(dh1 + end_off, mask=m_kv, other=0.0).to(tl.float32)
    ds2 = tl.load(dh2 + end_off, mask=m_kv, other=0.0).to(tl.float32)

    rows = tl.arange(0, BC)
    causal = rows[:, None] >= rows[None, :]  # [t, s]
    for ii in range(0, BT // BC):
        i = BT // BC - 1 - ii
        t = c * BT + i * BC + rows
        m_t = t < length
        tok = bos + t
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        qo = (tok * H + hq)[:, None] * K + o_k[None, :]
        b_q = tl.load(q + qo, mask=m_tk, other=0.0).to(tl.float32)
        b_k = tl.load(k + (tok * HK + hk)[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_do = tl.load(do + (tok * H + hq)[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(dt)
        b_g1 = tl.load(g1 + qo, mask=m_tk, other=0.0).to(tl.float32) * LOG2E
        b_g2 = tl.load(g2 + qo, mask=m_tk, other=0.0).to(tl.float32) * LOG2E
        ep1, en1, r1, tot1 = sub_chunk_decays(b_g1, rows, BC)
        ep2, en2, r2, tot2 = sub_chunk_decays(b_g2, rows, BC)

        qp1 = b_q * ep1
        qp2 = b_q * ep2
        kn1 = b_k * en1
        kn2 = b_k * en2
        a = w1 * tl.dot(qp1.to(dt), tl.trans(kn1.to(dt))) + w2 * tl.dot(qp2.to(dt), tl.trans(kn2.to(dt)))
        a = tl.where(causal, a, 0.0).to(dt)
        b_dv = tl.dot(tl.trans(a), b_do)
        b_dv += tl.dot((kn1 * tl.exp2(tot1 - r1)[None, :]).to(dt), ds1.to(dt))
        b_dv += tl.dot((kn2 * tl.exp2(tot2 - r2)[None, :]).to(dt), ds2.to(dt))
        tl.store(dv + (tok * H + hq)[:, None] * V + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_tv)

        ds1 = ds1 * tl.exp2(tot1)[:, None] + tl.dot(tl.trans((qp1 * (w1 * tl.exp2(r1))[None, :]).to(dt)), b_do)
        ds2 = ds2 * tl.exp2(tot2)[:, None] + tl.dot(tl.trans((qp2 * (w2 * tl.exp2(r2))[None, :]).to(dt)), b_do)


# Launch settings, from the sm_90 compile report (no spills); benchmarks/kernels.py sweeps them on the
# GPU. bk: K-tile of the dq/dk kernels ([bk, V] state tiles), bv: V-tile of the dv kernel ([K, bv]);
# both also capped so a state tile stays <= 4096 elements.
TUNING = {"bk": 32, "bv": 32, "num_warps": 8, "num_stages": 2}


def _k_tile(K: int, V: int) -> int:
    return max(16, min(TUNING["bk"], pow2(K), 4096 // pow2(V)))


def _v_tile(K: int, V: int) -> int:
    return max(16, min(TUNING["bv"], pow2(V), 4096 // pow2(K)))


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
    bk, bv = _k_tile(K, V), _v_tile(K, V)
    nk = triton.cdiv(K, bk)
    dmix_part = q.new_empty(layout.num_chunks, H, nk, 2, dtype=torch.float32)
    cu, ci, boffs, T = layout.kernel_args()
    meta = dict(H=H, HK=HK, K=K, V=V, BT=layout.chunk_size, BC=SUB_CHUNK, IS_VARLEN=layout.is_varlen,
                num_warps=TUNING["num_warps"], num_stages=TUNING["num_stages"])
    _dq_kernel[(nk, layout.num_chunks, H)](
        q, k, v, g1, g2, do, mix, h1, h2, dq, dg1, dg2, dmix_part, cu, ci, boffs, T, scale,
        BK=bk, BV=pow2(V), **meta)
    _dk_kernel[(nk, layout.num_chunks, H)](
        q, k, v, g1, g2, do, mix, h1, h2, dh1, dh2, dk, dg1, dg2, cu, ci, boffs, T, scale,
        BK=bk, BV=pow2(V), **meta)
    _dv_kernel[(triton.cdiv(V, bv), layout.num_chunks, H)](
        q, k, g1, g2, do, mix, dh1, dh2, dv, cu, ci, boffs, T, scale,
        BK=pow2(K), BV=bv, **meta)
    return dq, dk, dv, dg1, dg2, dmix_part.sum(dim=(0, 2))
