"""Forward output kernel: o for one chunk of one head from the two states at the chunk's start.

With b_i the in-chunk cumulative log2-decays of state i and h_i its state at the chunk start:

    o_t = sum_i m_i * [ (s q_t * 2^b_i,t) h_i  +  sum_{s<=t} A_i[t, s] v_s ],
    A_i[t, s] = sum_k s q_t[k] k_s[k] 2^(b_i,t[k] - b_i,s[k])        (`decayed_scores`, stable form)

The two score blocks are mixed before the single (A @ v) product, so v is read and multiplied once
for both states. Every product is a [BT, *] x [*, *] matmul over the whole chunk.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import SUB_CHUNK, chunk_coords, decayed_scores, pow2
from .layout import ChunkLayout


@triton.jit
def _chunk_output_kernel(
    q, k, v, g1, g2, mix, h1, h2, o,
    cu_seqlens, chunk_indices, boundary_offsets, T, scale,
    H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, G_FP32: tl.constexpr,
):
    i_v, i_c, hq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hk = hq // (H // HK)
    n, c, bos, length, boff = chunk_coords(i_c, cu_seqlens, chunk_indices, boundary_offsets, T, BT, IS_VARLEN)
    dt = h1.dtype.element_ty
    w1 = tl.load(mix + hq * 2) * scale
    w2 = tl.load(mix + hq * 2 + 1) * scale

    rows = tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    t = c * BT + rows
    m_t = t < length
    tok = bos + t
    m_tv = m_t[:, None] & m_v[None, :]
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    a = tl.zeros([BT, BT], dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BK)):  # K-tiles: scores and state read-outs are sums over K
        o_k = kb * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        qo = (tok * H + hq)[:, None] * K + o_k[None, :]
        b_q = tl.load(q + qo, mask=m_tk, other=0.0)
        b_k = tl.load(k + (tok * HK + hk)[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
        state_off = ((boff + c) * H + hq) * K * V + o_k[:, None] * V + o_v[None, :]
        m_kv = m_k[:, None] & m_v[None, :]

        a1, b1 = decayed_scores(b_q, b_k, tl.load(g1 + qo, mask=m_tk, other=0.0), rows, BT, BC, dt, G_FP32)
        h = tl.load(h1 + state_off, mask=m_kv, other=0.0).to(dt)
        b_o += w1 * tl.dot((b_q.to(tl.float32) * tl.exp2(b1)).to(dt), h)
        a2, b2 = decayed_scores(b_q, b_k, tl.load(g2 + qo, mask=m_tk, other=0.0), rows, BT, BC, dt, G_FP32)
        h = tl.load(h2 + state_off, mask=m_kv, other=0.0).to(dt)
        b_o += w2 * tl.dot((b_q.to(tl.float32) * tl.exp2(b2)).to(dt), h)
        a += w1 * a1 + w2 * a2
    b_v = tl.load(v + (tok * HK + hk)[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(dt)
    b_o += tl.dot(a.to(dt), b_v)
    tl.store(o + (tok * H + hq)[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_tv)


# Launch settings, from the sm_90 compile report (254 registers, no spills); benchmarks/kernels.py can
# sweep them on the GPU: key-tile height of the inner loop, value-tile width of a program, warps, and
# pipelining depth (1, as for the dv kernel of the same shape, see chunk_bwd.TUNING).
TUNING = {"bk": 32, "bv": 64, "num_warps": 8, "num_stages": 1}


def output_tile(K: int, V: int) -> int:
    return max(16, min(TUNING["bv"], pow2(V)))


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
        H=H, HK=HK, K=K, V=V, BT=layout.chunk_size, BC=SUB_CHUNK, BK=min(TUNING["bk"], pow2(K)), BV=bv,
        IS_VARLEN=layout.is_varlen, G_FP32=g1.dtype == torch.float32,
        num_warps=TUNING["num_warps"], num_stages=TUNING["num_stages"],
    )
    return o
