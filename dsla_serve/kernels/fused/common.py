"""Helpers shared by the DSLA Triton kernels (jit functions and launch-side choices).

Conventions of every kernel in this package:
- Inputs are contiguous [B*T, heads, dim] token-major tensors; query head h reads key/value head
  h // (H // HK) (GQA).
- Log-decays are summed as loaded (exact matmuls with 0/1 masks, see `row_sums`) and then scaled
  to base 2 (times log2(e)) so every decay is one `exp2`.
- SUB_CHUNK rows share one reference point inside a chunk, so an exponent spans at most 8 tokens:
  exact for per-token log-decays down to about -11 (fp32 range), far beyond logsigmoid(.)/16 gates.
- "Dot dtype" is the element type of the boundary-state buffers: bf16 for bf16 inputs on CUDA, fp32
  otherwise (fp16 states could overflow). Matmul operands are cast to it, accumulation is fp32.
  On CPU (TRITON_INTERPRET=1) it is always fp32: triton's interpreter multiplies the raw bit
  patterns of bf16 operands in `tl.dot` (seen with triton 3.9).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # kernels may only read constexpr globals
SUB_CHUNK = 16  # rows per sub-chunk sharing one decay reference point


@triton.jit
def chunk_coords(i_c, cu_seqlens, chunk_indices, boundary_offsets, T, BT: tl.constexpr,
                 IS_VARLEN: tl.constexpr):
    """Chunk program i_c -> (sequence n, chunk c in it, first token, sequence length, boundary row 0)."""
    if IS_VARLEN:
        n = tl.load(chunk_indices + i_c * 2).to(tl.int64)
        c = tl.load(chunk_indices + i_c * 2 + 1).to(tl.int64)
        bos = tl.load(cu_seqlens + n).to(tl.int64)
        length = tl.load(cu_seqlens + n + 1).to(tl.int64) - bos
        boff = tl.load(boundary_offsets + n).to(tl.int64)
    else:
        nt = tl.cdiv(T, BT)
        n = (i_c // nt).to(tl.int64)
        c = (i_c % nt).to(tl.int64)
        bos = n * T
        length = T + 0 * n
        boff = n * (nt + 1)
    return n, c, bos, length, boff


@triton.jit
def seq_coords(n, cu_seqlens, boundary_offsets, T, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Sequence n -> (first token, length, number of chunks, boundary row 0)."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + n).to(tl.int64)
        length = tl.load(cu_seqlens + n + 1).to(tl.int64) - bos
        boff = tl.load(boundary_offsets + n).to(tl.int64)
        nt = tl.cdiv(length, BT)
    else:
        nt = tl.cdiv(T, BT)
        bos = n.to(tl.int64) * T
        length = T + 0 * bos
        boff = n.to(tl.int64) * (nt + 1)
    return bos, length, nt, boff


@triton.jit
def row_sums(weights, g, DT: tl.constexpr, G_FP32: tl.constexpr):
    """[BT, BK] fp32 tile whose row t is sum_s weights[t, s] * g_s, computed as a matmul.

    `weights` holds 0, 1 or -1 (a bool mask works too): prefix, suffix and reference sums of
    log-decays need no scan and no cross-thread reduction, and the products are exact (bf16/fp16
    values are multiplied as they are, fp16 values are exact in tf32 too, fp32 values in "ieee").
    """
    if G_FP32:
        return tl.dot(weights.to(tl.float32), g, input_precision="ieee")
    else:
        return tl.dot(weights.to(DT), g.to(DT))


@triton.jit
def sub_chunk_ref(b, rows, i, BC: tl.constexpr):
    """[BK] reference of sub-chunk i: b at its middle row."""
    return tl.sum(tl.where(rows[:, None] == i * BC + BC // 2 - 1, b, 0.0), axis=0)


@triton.jit
def chunk_decays(g, rows, BT: tl.constexpr, BC: tl.constexpr, DT: tl.constexpr, G_FP32: tl.constexpr):
    """In-chunk cumulative log2-decays b [BT, BK] and rel = b - ref, ref = b at the middle row of the
    row's own sub-chunk (|rel| spans at most 8 tokens of decay). ref is read off b itself, so rel and
    the key-side exponents r_i - b round consistently.

    g: [BT, BK] log-decays as loaded (0 past the sequence end); rows: arange(BT).
    """
    b = row_sums(rows[:, None] >= rows[None, :], g, DT, G_FP32) * LOG2E
    ref = tl.zeros(b.shape, dtype=tl.float32)
    for i in tl.static_range(BT // BC):
        ref = tl.where((rows // BC)[:, None] == i, sub_chunk_ref(b, rows, i, BC)[None, :], ref)
    return b, b - ref


@triton.jit
def decayed_scores(q, k, g, rows, BT: tl.constexpr, BC: tl.constexpr, DT: tl.constexpr, G_FP32: tl.constexpr):
    """Intra-chunk scores of one state and the in-chunk cumulative log2-decays.

    Args:
        q, k: [BT, BK] (any float dtype); g: [BT, BK] log-decays as loaded; rows: arange(BT).
    Returns:
        a [BT, BT] fp32 with a[t, s] = sum_k q_t k_s 2^(b_t - b_s) for s <= t, else 0; and b [BT, BK].

    Stable form (secondary chunking): rows of sub-chunk i use q_t 2^(b_t - r_i) against
    k_s 2^(r_i - b_s), r_i = b at the middle row of sub-chunk i, so every exponent spans at most 8
    tokens of decay; keys after sub-chunk i get 2^-inf = 0 instead of an overflowing factor.
    """
    sub = rows // BC
    b, rel = chunk_decays(g, rows, BT, BC, DT, G_FP32)
    qt = (q.to(tl.float32) * tl.exp2(rel)).to(DT)
    a = tl.zeros([BT, BT], dtype=tl.float32)
    for i in range(BT // BC):  # a loop, not unrolled: keeps one sub-chunk's tiles live at a time
        r_i = sub_chunk_ref(b, rows, i, BC)
        kt = (k.to(tl.float32) * tl.exp2(tl.where(sub[:, None] <= i, r_i[None, :] - b, float("-inf")))).to(DT)
        a += tl.where(sub[:, None] == i, tl.dot(qt, tl.trans(kt)), 0.0)
    return tl.where(rows[:, None] >= rows[None, :], a, 0.0), b


def dot_dtype(x: torch.Tensor) -> torch.dtype:
    """Element type of boundary states and matmul operands for inputs like `x` (see module doc)."""
    return torch.bfloat16 if x.dtype == torch.bfloat16 and x.is_cuda else torch.float32


def pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))
