"""Backward of the output towards v, and the score gradient: dA and dv for one chunk of one head.

    dA[t, s] = do_t . v_s                                       (s <= t in the chunk, else 0)
    dv_s     = sum_t A[t, s] do_t + sum_i (k_s * 2^(B_i - b_i,s)) dS_i

with A the mixed score block (`chunk_scores`, kept by the forward), dS_i the gradient of state i at the
chunk's end boundary (`states.backward_states`), b_i the in-chunk inclusive cumulative log2-decay
(`chunk_decays`) and B_i its value at the chunk's last token (every exponent <= 0). A^T is a transposed load (no matmul result is transposed);
the decayed keys are 64-row tensor-core products over K tiles, as in `chunk_fwd`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import chunk_coords, chunk_totals, pow2
from .layout import ChunkLayout


@triton.jit
def _dv_kernel(
    k, v, b1, b2, do, A, dh1, dh2, dA, dv,
    cu_seqlens, chunk_indices, boundary_offsets, T, s_k, s_v,
    H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    i_v, i_c, hq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hk = hq // (H // HK)
    n, c, bos, length, boff = chunk_coords(i_c, cu_seqlens, chunk_indices, boundary_offsets, T, BT, IS_VARLEN)
    dt = dh1.dtype.element_ty

    rows = tl.arange(0, BT)
    t = c * BT + rows
    m_t = t < length
    tok = bos + t
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    m_tv = m_t[:, None] & m_v[None, :]
    end = ((boff + c + 1) * H + hq) * K * V

    b_do = tl.load(do + (tok * H + hq)[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(dt)
    a_t = tl.load(A + (tok[None, :] * H + hq) * BT + rows[:, None], mask=m_t[None, :], other=0.0).to(dt)  # [s, t]
    b_dv = tl.dot(a_t, b_do)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        b_k = tl.load(k + tok[:, None] * s_k + hk * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        bq = (tok * H + hq)[:, None] * K + o_k[None, :]
        tot1, tot2 = chunk_totals(b1, b2, bos, c, length, hq, o_k, H, K, BT)
        k1 = (b_k * tl.exp2(tot1[None, :] - tl.load(b1 + bq, mask=m_tk, other=0.0))).to(dt)
        k2 = (b_k * tl.exp2(tot2[None, :] - tl.load(b2 + bq, mask=m_tk, other=0.0))).to(dt)
        so = end + o_k[:, None] * V + o_v[None, :]
        m_kv = m_k[:, None] & m_v[None, :]
        b_dv += tl.dot(k1, tl.load(dh1 + so, mask=m_kv, other=0.0).to(dt))
        b_dv += tl.dot(k2, tl.load(dh2 + so, mask=m_kv, other=0.0).to(dt))
    tl.store(dv + (tok * H + hq)[:, None] * V + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_tv)

    if i_v == 0:  # dA needs the whole value axis: the first value tile's program writes it
        da = tl.zeros([BT, BT], dtype=tl.float32)
        for j_v in range(0, tl.cdiv(V, BV)):
            o_w = j_v * BV + tl.arange(0, BV)
            m_w = o_w < V
            d_o = tl.load(do + (tok * H + hq)[:, None] * V + o_w[None, :], mask=m_t[:, None] & m_w[None, :],
                          other=0.0).to(dt)
            v_t = tl.load(v + tok[None, :] * s_v + hk * V + o_w[:, None], mask=m_w[:, None] & m_t[None, :],
                          other=0.0).to(dt)  # [V tile, t]
            da = tl.dot(d_o, v_t, da)
        da = tl.where(rows[:, None] >= rows[None, :], da, 0.0)
        tl.store(dA + (tok * H + hq)[:, None] * BT + rows[None, :], da.to(dA.dtype.element_ty), mask=m_t[:, None])


# Launch settings; benchmarks/kernels.py sweeps them on the GPU. sm_90 compile report
# (benchmarks/compile_report.py, triton 3.9, bf16 logits): bk 32 / bv 64 224 registers, no spills,
# 57 KB shared; bk 64 / bv 128 (the output kernel's) spills 248 bytes.
TUNING = {"bk": 32, "bv": 64, "num_warps": 4, "num_stages": 2}


def chunk_dv(k, v, b1, b2, do, A, dh1, dh2, layout: ChunkLayout, dv_dtype):
    """dA and dv of every chunk.

    Args:
        k: [B*T, HK, K]; v: [B*T, HK, V] (any token strides); b1, b2: [B*T, H, K] fp32 cumulative
            log2-decays (`chunk_decays`).
        do: [B*T, H, V] contiguous; A: [B*T, H, chunk] scores; dh1, dh2: [NB, H, K, V] state gradients.
    Returns:
        dA [B*T, H, chunk] in the state dtype (zeros above the diagonal) and dv [B*T, H, V] per query
        head in `dv_dtype`.
    """
    TT, H, K = b1.shape
    HK, V = k.shape[1], v.shape[2]
    BT = layout.chunk_size
    dA = b1.new_empty(TT, H, BT, dtype=dh1.dtype)
    dv = b1.new_empty(TT, H, V, dtype=dv_dtype)
    bk, bv = min(TUNING["bk"], pow2(K)), min(TUNING["bv"], pow2(V))
    cu, ci, boffs, T = layout.kernel_args()
    _dv_kernel[(triton.cdiv(V, bv), layout.num_chunks, H)](
        k, v, b1, b2, do, A, dh1, dh2, dA, dv, cu, ci, boffs, T, k.stride(0), v.stride(0),
        H=H, HK=HK, K=K, V=V, BT=BT, BK=bk, BV=bv, IS_VARLEN=layout.is_varlen,
        num_warps=TUNING["num_warps"], num_stages=TUNING["num_stages"])
    return dA, dv
