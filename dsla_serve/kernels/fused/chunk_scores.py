"""Intra-chunk score kernel: the mixed causal score block of every chunk of every query head.

    A[t, s] = scale * sum_i m_i sum_k q_tk k_sk 2^(b_i,tk - b_i,sk)   for s <= t in one chunk, else 0

with b_i the in-chunk inclusive cumulative log2-decay of state i. The output kernel (`chunk_fwd`)
multiplies A by v once for both states. One program computes one [BC, BC] tile (query sub-chunk i,
key sub-chunk j <= i; BC = 16) for both states, a tensor-core product per key-channel tile with every
decay factor bounded:

- j < i: reference point = b at the last row before sub-chunk i, so the query side 2^(b_t - ref) and
  the key side 2^(ref - b_s) are both <= 1 (a product that underflows is truly tiny);
- j = i: reference at the sub-chunk's middle row (each exponent spans at most 8 tokens of decay:
  exact for per-token log-decays down to about -11), then the causal mask; this program also writes
  the zeros of the tiles j > i, so every element of A is written.

Query-side sums are scans within the sub-chunk (`query_exponent`); key-side sums are matmuls with
0/+-1 masks on tiles loaded transposed ([BK, BC]), so no matmul result is ever transposed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import LOG2E, SUB_CHUNK, Gates, chunk_coords, col_sums, load_gate, pow2
from .layout import ChunkLayout


@triton.jit
def query_exponent(g, r, diag_f, BC: tl.constexpr):
    """[BC, BK] base-2 exponent of the query side: b_t - b_mid (diag_f = 1) or b_t (diag_f = 0), b the
    inclusive cumulative sum of the sub-chunk's fp32 natural-log decays g [BC, BK].

    A scan rather than a masked matmul: with several warps per program a 16-row matmul result sits in
    a layout that every warp holds whole, so its exponentials would be computed once per warp (seen in
    the sm_90 compile report).
    """
    b = tl.cumsum(g * LOG2E, axis=0)
    mid = tl.sum(tl.where((r == BC // 2 - 1)[:, None], b, 0.0), axis=0)
    return b - (mid * diag_f)[None, :]


@triton.jit
def _chunk_scores_kernel(
    q, k, g1, g2, mix, A,
    cu_seqlens, chunk_indices, boundary_offsets, T, scale, s_q, s_k, s_g, gate_scale,
    H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    IS_VARLEN: tl.constexpr, DOT_BF16: tl.constexpr, GATE_LOGITS: tl.constexpr, ONE_PIECE: tl.constexpr,
):
    i_p, i_c, hq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    # program i_p -> tile (i, j), j <= i, numbered row by row: i_p = i (i + 1) / 2 + j
    i_i = i_p * 0
    for ii in tl.static_range(1, BT // BC):
        i_i += (i_p >= ii * (ii + 1) // 2).to(tl.int32)
    i_j = i_p - i_i * (i_i + 1) // 2
    diag = i_j == i_i
    hk = hq // (H // HK)
    n, c, bos, length, boff = chunk_coords(i_c, cu_seqlens, chunk_indices, boundary_offsets, T, BT, IS_VARLEN)
    dt = tl.bfloat16 if DOT_BF16 else tl.float32
    m1 = tl.load(mix + hq * 2) * scale
    m2 = tl.load(mix + hq * 2 + 1) * scale

    r = tl.arange(0, BC)
    t = c * BT + i_i * BC + r  # query rows
    m_t = t < length
    tok_q = bos + t
    s = c * BT + i_j * BC + r  # key rows
    m_s = s < length
    tok_k = bos + s
    diag_f = diag.to(tl.float32)
    # key-side exponent weights [u, s]; the query side is `query_exponent`
    before_mid = (r <= BC // 2 - 1).to(tl.float32)
    w_k = tl.where(diag, before_mid[:, None] - (r[:, None] <= r[None, :]).to(tl.float32),
                   (r[:, None] > r[None, :]).to(tl.float32))

    # Diagonal tile: query side b_t - b_mid, key side b_mid - b_s. Off-diagonal: reference = b at the
    # row before sub-chunk i, so the query side is the inclusive sum over sub-chunk i up to t and the
    # key side the sum after s up to that row (both <= 0). Every factor is per key channel, so the
    # channels are processed in independent tiles of BK.
    a = tl.zeros([BC, BC], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        b_q = tl.load(q + tok_q[:, None] * s_q + hq * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        gq = tok_q[:, None] * s_g + hq * K + o_k[None, :]
        b_g1 = load_gate(g1 + gq, m_tk, gate_scale, GATE_LOGITS)
        b_g2 = load_gate(g2 + gq, m_tk, gate_scale, GATE_LOGITS)
        m_ks = m_k[:, None] & m_s[None, :]
        gto = tok_k[None, :] * s_g + hq * K + o_k[:, None]
        b_kt = tl.load(k + tok_k[None, :] * s_k + hk * K + o_k[:, None], mask=m_ks, other=0.0).to(tl.float32)
        b_gt1 = load_gate(g1 + gto, m_ks, gate_scale, GATE_LOGITS)
        b_gt2 = load_gate(g2 + gto, m_ks, gate_scale, GATE_LOGITS)
        # log-decay summed over the sub-chunks strictly between j and i
        between1 = tl.zeros([BK], dtype=tl.float32)
        between2 = tl.zeros([BK], dtype=tl.float32)
        for u in range(i_j + 1, i_i):
            rows_u = c * BT + u * BC + r
            m_u = m_k[:, None] & (rows_u < length)[None, :]
            gbo = (bos + rows_u)[None, :] * s_g + hq * K + o_k[:, None]
            between1 += tl.sum(load_gate(g1 + gbo, m_u, gate_scale, GATE_LOGITS), axis=1)
            between2 += tl.sum(load_gate(g2 + gbo, m_u, gate_scale, GATE_LOGITS), axis=1)
        q1 = (b_q * m1 * tl.exp2(query_exponent(b_g1, r, diag_f, BC))).to(dt)
        q2 = (b_q * m2 * tl.exp2(query_exponent(b_g2, r, diag_f, BC))).to(dt)
        k1 = (b_kt * tl.exp2((col_sums(b_gt1, w_k, ONE_PIECE) + between1[:, None]) * LOG2E)).to(dt)
        k2 = (b_kt * tl.exp2((col_sums(b_gt2, w_k, ONE_PIECE) + between2[:, None]) * LOG2E)).to(dt)
        a = tl.dot(q1, k1, a)
        a = tl.dot(q2, k2, a)
    a = tl.where((r[:, None] >= r[None, :]) | (i_j < i_i), a, 0.0)
    a_rows = A + (tok_q * H + hq)[:, None] * BT
    tl.store(a_rows + i_j * BC + r[None, :], a.to(A.dtype.element_ty), mask=m_t[:, None])
    # the diagonal tile's program also zeroes the row block after it (others: first column >= BT)
    cols = tl.arange(0, BT)
    first_zero = (i_i + 1) * BC + (i_i - i_j) * BT
    tl.store(a_rows + cols[None, :], tl.zeros([BC, BT], dtype=A.dtype.element_ty),
             mask=m_t[:, None] & (cols >= first_zero)[None, :])


# Launch settings; benchmarks/kernels.py sweeps them on the GPU. One warp per program: the kernel's
# layout conversions and reductions then need no barrier across warps (2 and 4 warps measured 1.2 and
# 2.1 ms slower at T=32k); sm_90 compile report (triton 3.6, bf16, K=128): 156-167 registers, 4 KB of
# shared memory, no spills, so a dozen programs share an SM.
TUNING = {"bk": 32, "num_warps": 1, "num_stages": 2}


def chunk_scores(q, k, g1, g2, gates: Gates, mix, scale: float, layout: ChunkLayout, dtype):
    """Mixed intra-chunk scores.

    Args:
        q, g1, g2: [B*T, H, K]; k: [B*T, HK, K] (any token strides; g as `gates` says); mix: [H, 2]
            fp32; dtype: the dot dtype.
    Returns:
        A [B*T, H, chunk_size] in `dtype`: row t holds A[t, s] for the tokens s of t's chunk (s > t: 0).
    """
    H, K = q.shape[1], q.shape[2]
    HK = k.shape[1]
    BT = layout.chunk_size
    A = q.new_empty(q.shape[0], H, BT, dtype=dtype)
    cu, ci, boffs, T = layout.kernel_args()
    nc = BT // SUB_CHUNK
    grid = (nc * (nc + 1) // 2, layout.num_chunks, H)
    _chunk_scores_kernel[grid](
        q, k, g1, g2, mix, A, cu, ci, boffs, T, scale, q.stride(0), k.stride(0), g1.stride(0), gates.scale,
        H=H, HK=HK, K=K, BT=BT, BC=SUB_CHUNK, BK=min(TUNING["bk"], pow2(K)),
        IS_VARLEN=layout.is_varlen, DOT_BF16=dtype == torch.bfloat16, **gates.meta(),
        num_warps=TUNING["num_warps"], num_stages=TUNING["num_stages"],
    )
    return A
