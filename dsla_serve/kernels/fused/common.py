"""Helpers shared by the DSLA Triton kernels (jit functions and launch-side choices).

Conventions of every kernel in this package:
- Inputs are contiguous [B*T, heads, dim] token-major tensors; query head h reads key/value head
  h // (H // HK) (GQA).
- Log-decays are scaled to base 2 (times log2(e)) so every decay is one `exp2`. The chunk-level state
  passes and the forward score/output kernels sum them with masked matmuls (`row_sums`, `col_sums`),
  the backward per-chunk kernels with scans over sub-chunks (`sub_chunk_decays`).
- SUB_CHUNK rows share one reference point, so an exponent spans at most 8 tokens: exact for
  per-token log-decays down to about -11 (fp32 range), far beyond logsigmoid(.)/16 gates.
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
SUB_CHUNK = 16  # rows per sub-chunk: the diagonal blocks computed as small matmuls


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
def col_sums(g_t, weights_t, DT: tl.constexpr, G_FP32: tl.constexpr):
    """`row_sums` for a transposed tile: [BK, BC] fp32 whose column s is sum_u g_t[:, u] * weights_t[u, s].

    g_t is [BK, BU] (log-decays with the token axis last), weights_t [BU, BC] of 0, 1 or -1; the
    result is already in the layout of a matmul's right-hand operand, so nothing is transposed.
    """
    if G_FP32:
        return tl.dot(g_t.to(tl.float32), weights_t.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(g_t.to(DT), weights_t.to(DT))


@triton.jit
def sub_chunk_decays(g, rows, BC: tl.constexpr):
    """Decay factors of one sub-chunk, all finite for per-token |g| up to ~10 (fp32 range / 8).

    Args:
        g: [BC, BK] base-2 log-decays (0 on rows past the sequence end).
        rows: [BC] arange(0, BC).
    Returns:
        e_pos [BC, BK] = 2^(b_t - r), e_neg [BC, BK] = 2^(r - b_t), with b the inclusive cumulative
        sum of g and r = b at the middle row (the reference point, so |exponent| <= 8 tokens of decay);
        r [BK]; tot [BK] = b at the last row (the whole sub-chunk's decay).
    """
    b = tl.cumsum(g, axis=0)
    tot = tl.sum(g, axis=0)
    r = tl.sum(tl.where(rows[:, None] == BC // 2 - 1, b, 0.0), axis=0)
    e_pos = tl.exp2(b - r[None, :])
    e_neg = tl.exp2(r[None, :] - b)
    return e_pos, e_neg, r, tot


def dot_dtype(x: torch.Tensor) -> torch.dtype:
    """Element type of boundary states and matmul operands for inputs like `x` (see module doc)."""
    return torch.bfloat16 if x.dtype == torch.bfloat16 and x.is_cuda else torch.float32


def pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))
