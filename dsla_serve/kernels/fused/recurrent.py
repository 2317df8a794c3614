"""Token-by-token DSLA kernel for decode: both states of a [K, BV] tile stay in registers.

One program per (value tile, sequence, query head) walks its sequence's tokens:
    S_i <- diag(exp(g_i,t)) S_i + k_t^T v_t ;  o_t = s q_t (m_1 S_1 + m_2 S_2)
States are read from and written to rows given either by the sequence index or by a per-sequence
`slots` vector into a state pool (in place), so a whole decode batch is one launch with no host
synchronisation and fixed-size buffers (CUDA-graph capturable).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import LOG2E, Gates, load_gate, pow2


@triton.jit
def _recurrent_kernel(
    q, k, v, g1, g2, mix, o, init1, init2, final1, final2, slots, cu_seqlens, T, scale,
    s_q, s_k, s_v, s_g, gate_scale,
    H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, USE_SLOTS: tl.constexpr, IS_VARLEN: tl.constexpr,
    GATE_LOGITS: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    n, hq = i_nh // H, i_nh % H
    hk = hq // (H // HK)
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + n).to(tl.int64)
        length = tl.load(cu_seqlens + n + 1).to(tl.int64) - bos
    else:
        bos = n.to(tl.int64) * T
        length = T + 0 * bos
    if USE_SLOTS:
        row = tl.load(slots + n).to(tl.int64)
    else:
        row = n.to(tl.int64)
    m1 = tl.load(mix + hq * 2) * scale
    m2 = tl.load(mix + hq * 2 + 1) * scale

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    state_off = (row * H + hq) * K * V + o_k[:, None] * V + o_v[None, :]
    if HAS_INIT:
        s1 = tl.load(init1 + state_off, mask=m_kv, other=0.0).to(tl.float32)
        s2 = tl.load(init2 + state_off, mask=m_kv, other=0.0).to(tl.float32)
    else:
        s1 = tl.zeros([BK, BV], dtype=tl.float32)
        s2 = tl.zeros([BK, BV], dtype=tl.float32)

    for t in range(0, length):
        tok = bos + t
        b_q = tl.load(q + tok * s_q + hq * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_k = tl.load(k + tok * s_k + hk * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + tok * s_v + hk * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        go = tok * s_g + hq * K + o_k
        d1 = tl.exp2(load_gate(g1 + go, m_k, gate_scale, GATE_LOGITS) * LOG2E)
        d2 = tl.exp2(load_gate(g2 + go, m_k, gate_scale, GATE_LOGITS) * LOG2E)
        kv = b_k[:, None] * b_v[None, :]
        s1 = s1 * d1[:, None] + kv
        s2 = s2 * d2[:, None] + kv
        b_o = tl.sum(b_q[:, None] * (m1 * s1 + m2 * s2), axis=0)
        tl.store(o + (tok * H + hq) * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)

    if STORE_FINAL:
        tl.store(final1 + state_off, s1, mask=m_kv)
        tl.store(final2 + state_off, s2, mask=m_kv)


# Launch settings (benchmarks/kernels.py sweeps them): bv columns of each program's two [K, bv] fp32
# state tiles (capped so a tile holds at most 4096 elements), and warps. 32 x 4 warps: 159 registers,
# no spills, three programs per SM in the sm_90 compile report.
TUNING = {"bv": 32, "num_warps": 4}


def _value_tile(K: int, V: int) -> int:
    return max(16, min(pow2(V), TUNING["bv"], 4096 // pow2(K)))


def recurrent_forward(q, k, v, g1, g2, gates: Gates, mix, scale: float, num_seqs: int, seq_len: int,
                      initial_state, final_state, slots=None, cu_seqlens=None):
    """Run the recurrence; returns o [B*T, H, V] in q's dtype.

    Args:
        q, g1, g2: [B*T, H, K]; k: [B*T, HK, K]; v: [B*T, HK, V] (any token strides; g1 and g2 alike,
            read as `gates` says); mix [H, 2] fp32.
        num_seqs: N sequences; seq_len: T of each (unused with cu_seqlens).
        initial_state / final_state: None or pairs of [P, H, K, V] fp32 state tensors; rows are
            sequences, or `slots[n]` when slots ([N] int) is given. They may be the same tensors
            (in-place update): each program reads its tile before writing it.
        cu_seqlens: optional [N + 1] int32 offsets of packed sequences.
    """
    TT, H, K = q.shape
    HK, V = k.shape[1], v.shape[2]
    o = q.new_empty(TT, H, V)
    bv = _value_tile(K, V)
    init = initial_state if initial_state is not None else (None, None)
    fin = final_state if final_state is not None else (None, None)
    grid = (triton.cdiv(V, bv), num_seqs * H)
    _recurrent_kernel[grid](
        q, k, v, g1, g2, mix, o, init[0], init[1], fin[0], fin[1], slots, cu_seqlens, seq_len, scale,
        q.stride(0), k.stride(0), v.stride(0), g1.stride(0), gates.scale,
        H=H, HK=HK, K=K, V=V, BK=pow2(K), BV=bv,
        HAS_INIT=initial_state is not None, STORE_FINAL=final_state is not None,
        USE_SLOTS=slots is not None, IS_VARLEN=cu_seqlens is not None, GATE_LOGITS=gates.logits,
        num_warps=TUNING["num_warps"], num_stages=1,
    )
    return o
