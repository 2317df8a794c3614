"""Forward output kernel: o for one chunk of one head from the two states at the chunk's start.

Inside a chunk the program walks sub-chunks of 16 tokens, carrying both states ([K, BV] fp32 tiles)
in registers. For sub-chunk rows t with in-sub-chunk cumulative log2-decays b and the reference r
(b at the middle row):

    o_t = sum_i m_i * [ (s q_t * 2^b_t) S_i  +  sum_{s<=t, same sub-chunk} (s q_t * 2^(b_t-r)) . (k_s * 2^(r-b_s)) v_s ]
    S_i <- diag(2^B) S_i + (k * 2^(B - b))^T v

The two score blocks are mixed before the single (A @ v) product, so v is multiplied once for
both states.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import LOG2E, SUB_CHUNK, chunk_coords, pow2, sub_chunk_decays
from .layout import ChunkLayout


@triton.jit
def _chunk_output_kernel(
    q, k, v, g1, g2, mix, h1, h2, o,
    cu_seqlens, chunk_indices, boundary_offsets, T, scale,
    H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    i_v, i_c, hq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hk = hq // (H // HK)
    n, c, bos, length, boff = chunk_coords(i_c, cu_seqlens, chunk_indices, boundary_offsets, T, BT, IS_VARLEN)
    dt = h1.dtype.element_ty
    m1 = tl.load(mix + hq * 2)
    m2 = tl.load(mix + hq * 2 + 1)

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    state_off = ((boff + c) * H + hq) * K * V + o_k[:, None] * V + o_v[None, :]
    m_kv = m_k[:, None] & m_v[None, :]
    s1 = tl.load(h1 + state_off, mask=m_kv, other=0.0).to(tl.float32)
    s2 = tl.load(h2 + state_off, mask=m_kv, other=0.0).to(tl.float32)

    rows = tl.arange(0, BC)
    causal = rows[:, None] >= rows[None, :]
    for i in range(0, BT // BC):
        t = c * BT + i * BC + rows
        m_t = t < length
        tok = bos + t
        m_tk = m_t[:, None] & m_k[None, :]
        qo = (tok * H + hq)[:, None] * K + o_k[None, :]
        b_q = tl.load(q + qo, mask=m_tk, other=0.0).to(tl.float32) * scale
        b_k = tl.load(k + (tok * HK + hk)[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_v = tl.load(v + (tok * HK + hk)[:, None] * V + o_v[None, :],
                      mask=m_t[:, None] & m_v[None, :], other=0.0).to(dt)
        b_g1 = tl.load(g1 + qo, mask=m_tk, other=0.0).to(tl.float32) * LOG2E
        b_g2 = tl.load(g2 + qo, mask=m_tk, other=0.0).to(tl.float32) * LOG2E
        ep1, en1, r1, tot1 = sub_chunk_decays(b_g1, rows, BC)
        ep2, en2, r2, tot2 = sub_chunk_decays(b_g2, rows, BC)

        qp1 = b_q * ep1
        qp2 = b_q * ep2
        kn1 = b_k * en1
        kn2 = b_k * en2
        a1 = tl.dot(qp1.to(dt), tl.trans(kn1.to(dt)))
        a2 = tl.dot(qp2.to(dt), tl.trans(kn2.to(dt)))
        a = tl.where(causal, m1 * a1 + m2 * a2, 0.0)
        b_o = tl.dot(a.to(dt), b_v)
        b_o += tl.dot((qp1 * (m1 * tl.exp2(r1))[None, :]).to(dt), s1.to(dt))
        b_o += tl.dot((qp2 * (m2 * tl.exp2(r2))[None, :]).to(dt), s2.to(dt))
        tl.store(o + (tok * H + hq)[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty),
                 mask=m_t[:, None] & m_v[None, :])

        s1 = s1 * tl.exp2(tot1)[:, None] + tl.dot(tl.trans((kn1 * tl.exp2(tot1 - r1)[None, :]).to(dt)), b_v)
        s2 = s2 * tl.exp2(tot2)[:, None] + tl.dot(tl.trans((kn2 * tl.exp2(tot2 - r2)[None, :]).to(dt)), b_v)


# Launch settings, from the sm_90 compile report (no spills, two programs per SM); benchmarks/kernels.py
# sweeps them on the GPU. The value tile is also capped so a [K, BV] fp32 state tile stays <= 4096.
TUNING = {"bv": 32, "num_warps": 4, "num_stages": 2}


def output_tile(K: int, V: int) -> int:
    return max(16, min(TUNING["bv"], pow2(V), 4096 // pow2(K)))


def chunk_output(q, k, v, g1, g2, mix, h1, h2, scale: float, layout: ChunkLayout, out_dtype):
    """o [B*T, H, V] from flat inputs (see `forward_states`) and the boundary states h1, h2."""
    H, K = q.shape[1], q.shape[2]
    HK, V = k.shape[1], v.shape[2]
    o = q.new_empty(q.shape[0], H, V, dtype=out_dtype)
    bv = output_tile(K, V)
    cu, ci, boffs, T = layout.kernel_args()
    grid = (triton.cdiv(V, bv), layout.num_chunks, H)
    _chunk_output_kernel[grid](
        q, k, v, g1, g2, mix, h1, h2, o, cu, ci, boffs, T, scale,
        H=H, HK=HK, K=K, V=V, BT=layout.chunk_size, BC=SUB_CHUNK, BK=pow2(K), BV=bv,
        IS_VARLEN=layout.is_varlen, num_warps=TUNING["num_warps"], num_stages=TUNING["num_stages"],
    )
    return o
