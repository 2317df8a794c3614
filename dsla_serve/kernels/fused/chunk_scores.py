"""Intra-chunk score kernel: the mixed causal score block of every chunk of every query head.

    A[t, s] = scale * sum_i m_i sum_k q_tk k_sk 2^(b_i,tk - b_i,sk)   for s <= t in one chunk, else 0

with b_i the in-chunk inclusive cumulative log2-decay of state i (`decays.chunk_decays`). The output
kernel (`chunk_fwd`) multiplies A by v once for both states. One program computes one [BC, BC] tile
(query sub-chunk i, key sub-chunk j <= i; BC = 16) for both states, a tensor-core product per
key-channel tile with every decay factor bounded by a reference row r:

- j < i: r = the last row before sub-chunk i, so the query side 2^(b_t - b_r) and the key side
  2^(b_r - b_s) are both <= 1 (a product that underflows is truly tiny);
- j = i: r = the sub-chunk's middle row (each exponent spans at most 8 tokens of decay: exact for
  per-token log-decays down to about -11), then the causal mask; this program also writes the zeros
  of the tiles j > i, so every element of A is written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import SUB_CHUNK, chunk_coords, pow2
from .layout import ChunkLayout


@triton.jit
def _chunk_scores_kernel(
    q, k, b1, b2, mix, A,
    cu_seqlens, chunk_indices, boundary_offsets, T, scale, s_q, s_k,
    H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    IS_VARLEN: tl.constexpr, DOT_BF16: tl.constexpr,
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
    # reference row (module doc), never past the sequence's last token
    ref = tl.minimum(tl.where(diag, i_i * BC + BC // 2 - 1, i_i * BC - 1), length - 1 - c * BT)
    tok_r = bos + c * BT + ref

    a = tl.zeros([BC, BC], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        m_ks = m_k[:, None] & m_s[None, :]
        b_q = tl.load(q + tok_q[:, None] * s_q + hq * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_kt = tl.load(k + tok_k[None, :] * s_k + hk * K + o_k[:, None], mask=m_ks, other=0.0).to(tl.float32)
        bq = (tok_q * H + hq)[:, None] * K + o_k[None, :]
        bk = (tok_k * H + hq)[None, :] * K + o_k[:, None]  # [BK, BC]: keys transposed
        br = (tok_r * H + hq) * K + o_k
        r1 = tl.load(b1 + br, mask=m_k, other=0.0)
        r2 = tl.load(b2 + br, mask=m_k, other=0.0)
        # rows past the end: exponent 0 (their q and k are 0), never an overflow times 0
        e_q1 = tl.where(m_tk, tl.load(b1 + bq, mask=m_tk, other=0.0) - r1[None, :], 0.0)
        e_q2 = tl.where(m_tk, tl.load(b2 + bq, mask=m_tk, other=0.0) - r2[None, :], 0.0)
        e_k1 = tl.where(m_ks, r1[:, None] - tl.load(b1 + bk, mask=m_ks, other=0.0), 0.0)
        e_k2 = tl.where(m_ks, r2[:, None] - tl.load(b2 + bk, mask=m_ks, other=0.0), 0.0)
        a = tl.dot((b_q * m1 * tl.exp2(e_q1)).to(dt), (b_kt * tl.exp2(e_k1)).to(dt), a)
        a = tl.dot((b_q * m2 * tl.exp2(e_q2)).to(dt), (b_kt * tl.exp2(e_k2)).to(dt), a)
    a = tl.where((r[:, None] >= r[None, :]) | (i_j < i_i), a, 0.0)
    a_rows = A + (tok_q * H + hq)[:, None] * BT
    tl.store(a_rows + i_j * BC + r[None, :], a.to(A.dtype.element_ty), mask=m_t[:, None])
    # the diagonal tile's program also zeroes the row block after it (others: first column >= BT)
    cols = tl.arange(0, BT)
    first_zero = (i_i + 1) * BC + (i_i - i_j) * BT
    tl.store(a_rows + cols[None, :], tl.zeros([BC, BT], dtype=A.dtype.element_ty),
             mask=m_t[:, None] & (cols >= first_zero)[None, :])


# Launch settings; benchmarks/kernels.py sweeps them on the GPU. One warp per program: the tiles are
# 16 x 16, and a single warp's layout conversions need no barrier across warps.
TUNING = {"bk": 32, "num_warps": 1, "num_stages": 2}


def chunk_scores(q, k, b1, b2, mix, scale: float, layout: ChunkLayout, dtype):
    """Mixed intra-chunk scores.

    Args:
        q: [B*T, H, K]; k: [B*T, HK, K] (any token strides); b1, b2: [B*T, H, K] fp32 cumulative
            log2-decays (`chunk_decays`); mix: [H, 2] fp32; dtype: the dot dtype.
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
        q, k, b1, b2, mix, A, cu, ci, boffs, T, scale, q.stride(0), k.stride(0),
        H=H, HK=HK, K=K, BT=BT, BC=SUB_CHUNK, BK=min(TUNING["bk"], pow2(K)),
        IS_VARLEN=layout.is_varlen, DOT_BF16=dtype == torch.bfloat16,
        num_warps=TUNING["num_warps"], num_stages=TUNING["num_stages"],
    )
    return A
