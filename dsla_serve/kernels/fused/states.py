"""Chunk-level state passes: both DSLA states at every chunk boundary, forward and backward.

Forward: S_i <- diag(2^B_i) S_i + (k * 2^(B_i - b_i))^T v over each chunk (b_i the in-chunk cumulative
log2-decay, `chunk_decays`; B_i its value at the chunk's last token; every exponent <= 0).
One program owns a [BK, BV] tile of both states of one (sequence, query head), so k, v and the two
decays are read once for both states.

Backward: the gradient with respect to the state at each boundary, walking chunks in reverse:
dS_i <- diag(2^B_i) dS_i + (scale * m_i * q * 2^b_i)^T do. Boundary j holds dL/d(state at boundary j);
boundary 0 is the initial state's gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import chunk_totals, pow2, seq_coords
from .layout import ChunkLayout


@triton.jit
def _forward_states_kernel(
    k, v, b1, b2, h1, h2, init1, init2, final1, final2,
    cu_seqlens, boundary_offsets, T, s_k, s_v,
    H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n, hq = i_nh // H, i_nh % H
    hk = hq // (H // HK)
    bos, length, nt, boff = seq_coords(n, cu_seqlens, boundary_offsets, T, BT, IS_VARLEN)
    dt = h1.dtype.element_ty

    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_kv = (o_k[:, None] < K) & (o_v[None, :] < V)
    state_off = o_k[:, None] * V + o_v[None, :]  # [BK, BV] inside one [K, V] state
    if HAS_INIT:
        s1 = tl.load(init1 + (n * H + hq).to(tl.int64) * K * V + state_off, mask=m_kv, other=0.0)
        s2 = tl.load(init2 + (n * H + hq).to(tl.int64) * K * V + state_off, mask=m_kv, other=0.0)
    else:
        s1 = tl.zeros([BK, BV], dtype=tl.float32)
        s2 = tl.zeros([BK, BV], dtype=tl.float32)

    rows = tl.arange(0, BT)
    for c in range(0, nt):
        h_off = ((boff + c) * H + hq) * K * V
        tl.store(h1 + h_off + state_off, s1.to(dt), mask=m_kv)
        tl.store(h2 + h_off + state_off, s2.to(dt), mask=m_kv)

        t = c * BT + rows
        m_t = t < length
        tok = bos + t
        m_tk = m_t[:, None] & (o_k[None, :] < K)
        b_k = tl.load(k + tok[:, None] * s_k + hk * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_v = tl.load(v + tok[:, None] * s_v + hk * V + o_v[None, :],
                      mask=m_t[:, None] & (o_v[None, :] < V), other=0.0).to(dt)
        bq = (tok * H + hq)[:, None] * K + o_k[None, :]
        e1 = tl.load(b1 + bq, mask=m_tk, other=0.0)
        e2 = tl.load(b2 + bq, mask=m_tk, other=0.0)
        tot1, tot2 = chunk_totals(b1, b2, bos, c, length, hq, o_k, H, K, BT)
        k1 = (b_k * tl.exp2(tot1[None, :] - e1)).to(dt)  # rows past the end: k = 0, factor <= 1
        k2 = (b_k * tl.exp2(tot2[None, :] - e2)).to(dt)
        s1 = s1 * tl.exp2(tot1)[:, None] + tl.dot(tl.trans(k1), b_v)
        s2 = s2 * tl.exp2(tot2)[:, None] + tl.dot(tl.trans(k2), b_v)

    h_off = ((boff + nt) * H + hq) * K * V
    tl.store(h1 + h_off + state_off, s1.to(dt), mask=m_kv)
    tl.store(h2 + h_off + state_off, s2.to(dt), mask=m_kv)
    if STORE_FINAL:
        f_off = (n * H + hq).to(tl.int64) * K * V
        tl.store(final1 + f_off + state_off, s1, mask=m_kv)
        tl.store(final2 + f_off + state_off, s2, mask=m_kv)


@triton.jit
def _backward_states_kernel(
    q, b1, b2, do, mix, dh1, dh2, dfinal1, dfinal2, dinit1, dinit2,
    cu_seqlens, boundary_offsets, T, scale, s_q,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_DFINAL: tl.constexpr, STORE_DINIT: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n, hq = i_nh // H, i_nh % H
    bos, length, nt, boff = seq_coords(n, cu_seqlens, boundary_offsets, T, BT, IS_VARLEN)
    dt = dh1.dtype.element_ty
    w1 = tl.load(mix + hq * 2) * scale
    w2 = tl.load(mix + hq * 2 + 1) * scale

    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_kv = (o_k[:, None] < K) & (o_v[None, :] < V)
    state_off = o_k[:, None] * V + o_v[None, :]
    if HAS_DFINAL:
        ds1 = tl.load(dfinal1 + (n * H + hq).to(tl.int64) * K * V + state_off, mask=m_kv, other=0.0)
        ds2 = tl.load(dfinal2 + (n * H + hq).to(tl.int64) * K * V + state_off, mask=m_kv, other=0.0)
    else:
        ds1 = tl.zeros([BK, BV], dtype=tl.float32)
        ds2 = tl.zeros([BK, BV], dtype=tl.float32)

    rows = tl.arange(0, BT)
    for cc in range(0, nt):
        c = nt - 1 - cc
        h_off = ((boff + c + 1) * H + hq) * K * V
        tl.store(dh1 + h_off + state_off, ds1.to(dt), mask=m_kv)
        tl.store(dh2 + h_off + state_off, ds2.to(dt), mask=m_kv)

        t = c * BT + rows
        m_t = t < length
        tok = bos + t
        m_tk = m_t[:, None] & (o_k[None, :] < K)
        b_q = tl.load(q + tok[:, None] * s_q + hq * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_do = tl.load(do + (tok * H + hq)[:, None] * V + o_v[None, :],
                       mask=m_t[:, None] & (o_v[None, :] < V), other=0.0).to(dt)
        bq = (tok * H + hq)[:, None] * K + o_k[None, :]
        tot1, tot2 = chunk_totals(b1, b2, bos, c, length, hq, o_k, H, K, BT)
        q1 = (b_q * tl.exp2(tl.load(b1 + bq, mask=m_tk, other=0.0)) * w1).to(dt)
        q2 = (b_q * tl.exp2(tl.load(b2 + bq, mask=m_tk, other=0.0)) * w2).to(dt)
        ds1 = ds1 * tl.exp2(tot1)[:, None] + tl.dot(tl.trans(q1), b_do)
        ds2 = ds2 * tl.exp2(tot2)[:, None] + tl.dot(tl.trans(q2), b_do)

    h_off = (boff * H + hq) * K * V
    tl.store(dh1 + h_off + state_off, ds1.to(dt), mask=m_kv)
    tl.store(dh2 + h_off + state_off, ds2.to(dt), mask=m_kv)
    if STORE_DINIT:
        i_off = (n * H + hq).to(tl.int64) * K * V
        tl.store(dinit1 + i_off + state_off, ds1, mask=m_kv)
        tl.store(dinit2 + i_off + state_off, ds2, mask=m_kv)


# Launch settings of the two state passes: each program's [BK, BV] tile of both states (capped by the
# padded K and V), warps and pipelining depth. Chosen from the sm_90 compile report (two programs per
# SM, at most a few spilled registers), so that B=1, H=32, K=V=128 fits one wave of 256 programs;
# benchmarks/kernels.py sweeps them on the GPU.
FORWARD_TUNING = {"bk": 32, "bv": 64, "num_warps": 4, "num_stages": 2}
BACKWARD_TUNING = {"bk": 32, "bv": 64, "num_warps": 4, "num_stages": 2}


def _state_tiles(K: int, V: int, tuning: dict) -> tuple[int, int]:
    return min(tuning["bk"], pow2(K)), min(tuning["bv"], pow2(V))


def forward_states(k, v, b1, b2, layout: ChunkLayout, initial_state, store_final: bool, dtype):
    """States at every chunk boundary.

    Args:
        k: [B*T, HK, K]; v: [B*T, HK, V] (any token strides); b1, b2: [B*T, H, K] fp32 cumulative
            log2-decays (`chunk_decays`).
        initial_state: None or a pair of [N, H, K, V] fp32.
        dtype: element type of the boundary buffers (the dot dtype).
    Returns:
        h1, h2 [NB, H, K, V] in `dtype`, and final (s1, s2) [N, H, K, V] fp32 if store_final else None.
    """
    HK, K = k.shape[1], k.shape[2]
    H, V = b1.shape[1], v.shape[2]
    N = layout.num_seqs
    h1 = k.new_empty(layout.num_boundaries, H, K, V, dtype=dtype)
    h2 = torch.empty_like(h1)
    final = None
    if store_final:
        final = (k.new_empty(N, H, K, V, dtype=torch.float32), k.new_empty(N, H, K, V, dtype=torch.float32))
    bk, bv = _state_tiles(K, V, FORWARD_TUNING)
    cu, _, boffs, T = layout.kernel_args()
    init = initial_state if initial_state is not None else (None, None)
    fin = final if final is not None else (None, None)
    grid = (triton.cdiv(K, bk), triton.cdiv(V, bv), N * H)
    _forward_states_kernel[grid](
        k, v, b1, b2, h1, h2, init[0], init[1], fin[0], fin[1], cu, boffs, T, k.stride(0), v.stride(0),
        H=H, HK=HK, K=K, V=V, BT=layout.chunk_size, BK=bk, BV=bv,
        HAS_INIT=initial_state is not None, STORE_FINAL=store_final, IS_VARLEN=layout.is_varlen,
        num_warps=FORWARD_TUNING["num_warps"], num_stages=FORWARD_TUNING["num_stages"],
    )
    return h1, h2, final


def backward_states(q, b1, b2, do, mix, scale: float, layout: ChunkLayout, dfinal, want_dinit: bool, dtype):
    """Gradients with respect to the states at every chunk boundary.

    Args:
        q: [B*T, H, K] (any token stride); b1, b2: [B*T, H, K] fp32 cumulative log2-decays
            (`chunk_decays`); do: [B*T, H, V] contiguous; mix: [H, 2] fp32.
        dfinal: None or a pair of [N, H, K, V] gradients of the final states.
    Returns:
        dh1, dh2 [NB, H, K, V] in `dtype`, and (dinit1, dinit2) [N, H, K, V] fp32 if want_dinit else None.
    """
    H, K = q.shape[1], q.shape[2]
    V = do.shape[2]
    N = layout.num_seqs
    dh1 = q.new_empty(layout.num_boundaries, H, K, V, dtype=dtype)
    dh2 = torch.empty_like(dh1)
    dinit = None
    if want_dinit:
        dinit = (q.new_empty(N, H, K, V, dtype=torch.float32), q.new_empty(N, H, K, V, dtype=torch.float32))
    bk, bv = _state_tiles(K, V, BACKWARD_TUNING)
    cu, _, boffs, T = layout.kernel_args()
    dfin = dfinal if dfinal is not None else (None, None)
    dini = dinit if dinit is not None else (None, None)
    grid = (triton.cdiv(K, bk), triton.cdiv(V, bv), N * H)
    _backward_states_kernel[grid](
        q, b1, b2, do, mix, dh1, dh2, dfin[0], dfin[1], dini[0], dini[1], cu, boffs, T, scale, q.stride(0),
        H=H, K=K, V=V, BT=layout.chunk_size, BK=bk, BV=bv,
        HAS_DFINAL=dfinal is not None, STORE_DINIT=want_dinit, IS_VARLEN=layout.is_varlen,
        num_warps=BACKWARD_TUNING["num_warps"], num_stages=BACKWARD_TUNING["num_stages"],
    )
    return dh1, dh2, dinit
