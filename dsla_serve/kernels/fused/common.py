"""Helpers shared by the DSLA Triton kernels (jit functions and launch-side choices).

Conventions of every kernel in this package:
- Inputs are [B*T, heads, dim] token-major tensors whose heads and dim are contiguous; the token axis
  may have any stride (`flat_tokens`), so q/k/v/gate views of one merged projection output are read
  in place. Query head h reads key/value head h // (H // HK) (GQA). Outputs are contiguous.
- g1/g2 are read by `load_gate`: log-decays as given, or gate logits x whose log-decay
  logsigmoid(x) * scale is computed in fp32 at the load (`Gates`). Log-decays are scaled to base 2
  (times log2(e)) so every decay is one `exp2`.
- The gates are read once per pass, by `decays.chunk_decays` (chunked kernels: in-chunk cumulative
  log2-decays in fp32, which every other chunk kernel reads) or by the recurrent kernels.
- A decay between two tokens of one chunk is 2^(b_t - b_s), split at a reference row r into
  2^(b_t - b_r) * 2^(b_r - b_s): both <= 1 across sub-chunks; within one SUB_CHUNK r is its middle
  row, so an exponent spans at most 8 tokens: exact for per-token log-decays down to about -11 (fp32
  range), far beyond logsigmoid(.)/16 gates.
- "Dot dtype" is the element type of the boundary-state buffers: bf16 for bf16 inputs on CUDA, fp32
  otherwise (fp16 states could overflow). Matmul operands are cast to it, accumulation is fp32.
  Under TRITON_INTERPRET=1 it is always fp32, and so are the bf16 pieces of `row_sums`: triton's
  interpreter multiplies the raw bit patterns of bf16 operands in `tl.dot` (seen with triton 3.9).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # kernels may only read constexpr globals
INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")
SUB_CHUNK = 16  # rows per sub-chunk: the diagonal blocks computed as small matmuls


@dataclass(frozen=True)
class Gates:
    """How the kernels read g1/g2.

    logits: g1/g2 hold gate logits x; the log-decay is logsigmoid(x) * scale.
    scale: 1 / gate_logit_normalizer (1.0 for log-decays).
    """

    logits: bool
    scale: float

    @staticmethod
    def of(g: torch.Tensor, gate_logit_normalizer: float | None) -> "Gates":
        if gate_logit_normalizer is None:
            return Gates(False, 1.0)
        return Gates(True, 1.0 / float(gate_logit_normalizer))


def flat_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, T, heads, dim] -> [B*T, heads, dim] with heads and dim contiguous: a view with x's token
    stride when the token axis has one (e.g. a column slice of a projection output), else a copy."""
    B, T, Hx, D = x.shape
    if x.stride(3) == 1 and (x.stride(2) == D or Hx == 1):
        s = x.stride(0) if T == 1 else (x.stride(1) if B == 1 or x.stride(0) == T * x.stride(1) else None)
        if s is not None:
            return x.as_strided((B * T, Hx, D), (s, D, 1))
    return x.contiguous().view(B * T, Hx, D)


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
def chunk_totals(b1, b2, bos, c, length, hq, o_k, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr):
    """[BK] each: B_1, B_2, the cumulative log2-decays `decays.chunk_decays` wrote at chunk c's last token
    (the chunk's total decay; a ragged last chunk ends at the sequence's end), 0 for channels past K."""
    at = ((bos + tl.minimum(c * BT + BT, length) - 1) * H + hq) * K + o_k
    return tl.load(b1 + at, mask=o_k < K, other=0.0), tl.load(b2 + at, mask=o_k < K, other=0.0)


@triton.jit
def load_gate(ptrs, mask, scale, GATE_LOGITS: tl.constexpr):
    """fp32 natural-log decays at `ptrs`, 0 where ~mask: the values as stored, or for gate logits x
    logsigmoid(x) * scale = (min(x, 0) - log1p(exp(-|x|))) * scale, with log1p in Goldberg's form
    (exact for tiny exp(-|x|), where a plain log(1 + y) loses the digits of a history gate)."""
    x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    if GATE_LOGITS:
        y = tl.exp(-tl.abs(x))
        u = 1.0 + y
        log1p = tl.where(u == 1.0, y, tl.log(u) * (y / tl.where(u == 1.0, 1.0, u - 1.0)))
        x = tl.where(mask, (tl.minimum(x, 0.0) - log1p) * scale, 0.0)
    return x


@triton.jit
def gate_grad_factor(ptrs, mask, scale):
    """d logsigmoid(x) * scale / dx = sigmoid(-x) * scale for the gate logits at `ptrs` (stable)."""
    x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, e / (1.0 + e), 1.0 / (1.0 + e)) * scale


@triton.jit
def _piece(x):
    """A tile of bf16 values as a matmul operand: bf16, or fp32 under the interpreter (module doc)."""
    if INTERPRET:
        return x.to(tl.float32)
    else:
        return x.to(tl.bfloat16)


@triton.jit
def row_sums(weights, g):
    """[BT, BK] fp32 tile whose row t is sum_s weights[t, s] * g[s, :], computed as a matmul.

    `weights` holds 0, 1 or -1 (a bool mask works too), so prefix and suffix sums need no scan and no
    cross-thread reduction. g's fp32 values are split into three bf16 pieces hi + mid + lo (8
    significant bits each: the fp32 value exactly), three tensor-core products accumulated in fp32
    from the smallest, so the sums keep fp32 precision without the slow fp32 ("ieee") product.
    """
    x = g.to(tl.float32)
    w = _piece(weights)
    hi = x.to(tl.bfloat16).to(tl.float32)
    rest = x - hi
    mid = rest.to(tl.bfloat16).to(tl.float32)
    lo = rest - mid
    acc = tl.dot(w, _piece(lo))
    acc = tl.dot(w, _piece(mid), acc)
    return tl.dot(w, _piece(hi), acc)


def dot_dtype(x: torch.Tensor) -> torch.dtype:
    """Element type of boundary states and matmul operands for inputs like `x` (see module doc)."""
    return torch.bfloat16 if x.dtype == torch.bfloat16 and x.is_cuda else torch.float32


def pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))
