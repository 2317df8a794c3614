"""Helpers shared by the DSLA Triton kernels (jit functions and launch-side choices).

Conventions of every kernel in this package:
- Inputs are [B*T, heads, dim] token-major tensors whose heads and dim are contiguous; the token axis
  may have any stride (`flat_tokens`), so q/k/v/gate views of one merged projection output are read
  in place. Query head h reads key/value head h // (H // HK) (GQA). Outputs are contiguous.
- g1/g2 are read by `load_gate`: log-decays as given, or gate logits x whose log-decay
  logsigmoid(x) * scale is computed in fp32 at the load (`Gates`). Log-decays are scaled to base 2
  (times log2(e)) so every decay is one `exp2`.
- Decay sums over tokens are matmuls with 0/1 masks (`row_sums`, `col_sums`) on the tensor cores:
  one bf16 product when g holds bf16 values, else three (g split into bf16 pieces that add up to its
  fp32 value), so fp32 log-decays keep fp32 sums without the slow fp32 ("ieee") product.
- SUB_CHUNK rows share one reference point, so an exponent spans at most 8 tokens: exact for
  per-token log-decays down to about -11 (fp32 range), far beyond logsigmoid(.)/16 gates.
- "Dot dtype" is the element type of the boundary-state buffers: bf16 for bf16 inputs on CUDA, fp32
  otherwise (fp16 states could overflow). Matmul operands are cast to it, accumulation is fp32.
  Under TRITON_INTERPRET=1 it is always fp32, and so are the pieces of `row_sums` (holding bf16
  values): triton's interpreter multiplies the raw bit patterns of bf16 operands in `tl.dot`
  (seen with triton 3.9).
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
    one_piece: the log-decays' values are exact in bf16 (bf16 log-decays), so a decay sum is one
        bf16 product; otherwise three (`row_sums`).
    """

    logits: bool
    scale: float
    one_piece: bool

    @staticmethod
    def of(g: torch.Tensor, gate_logit_normalizer: float | None) -> "Gates":
        if gate_logit_normalizer is None:
            return Gates(False, 1.0, g.dtype == torch.bfloat16)
        return Gates(True, 1.0 / float(gate_logit_normalizer), False)

    def meta(self) -> dict:
        return dict(GATE_LOGITS=self.logits, ONE_PIECE=self.one_piece)


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
def _piece_sums(a, b, ONE_PIECE: tl.constexpr, B_SPLIT: tl.constexpr):
    """a @ b in fp32, where one factor (b if B_SPLIT, else a) holds arbitrary fp32 values and the other
    0, 1 or -1: one bf16 product if the values are exact in bf16 (ONE_PIECE), else the values split
    into three bf16 pieces hi + mid + lo (8 significant bits each: the fp32 value exactly), three
    products accumulated in fp32 from the smallest."""
    if B_SPLIT:
        x = b.to(tl.float32)
        w = _piece(a)
    else:
        x = a.to(tl.float32)
        w = _piece(b)
    hi = x.to(tl.bfloat16).to(tl.float32)
    if ONE_PIECE:
        if B_SPLIT:
            acc = tl.dot(w, _piece(hi))
        else:
            acc = tl.dot(_piece(hi), w)
    else:
        rest = x - hi
        mid = rest.to(tl.bfloat16).to(tl.float32)
        lo = rest - mid
        if B_SPLIT:
            acc = tl.dot(w, _piece(lo))
            acc = tl.dot(w, _piece(mid), acc)
            acc = tl.dot(w, _piece(hi), acc)
        else:
            acc = tl.dot(_piece(lo), w)
            acc = tl.dot(_piece(mid), w, acc)
            acc = tl.dot(_piece(hi), w, acc)
    return acc


@triton.jit
def row_sums(weights, g, ONE_PIECE: tl.constexpr):
    """[BT, BK] fp32 tile whose row t is sum_s weights[t, s] * g[s, :], computed as a matmul.

    `weights` holds 0, 1 or -1 (a bool mask works too): prefix, suffix and reference sums of
    log-decays (or of any fp32 values, ONE_PIECE=False) need no scan and no cross-thread reduction.
    """
    return _piece_sums(weights, g, ONE_PIECE, True)


@triton.jit
def col_sums(g_t, weights_t, ONE_PIECE: tl.constexpr):
    """`row_sums` for a transposed tile: [BK, BC] fp32 whose column s is sum_u g_t[:, u] * weights_t[u, s].

    g_t is [BK, BU] (values with the token axis last), weights_t [BU, BC] of 0, 1 or -1; the result is
    already in the layout of a matmul's right-hand operand, so nothing is transposed.
    """
    return _piece_sums(g_t, weights_t, ONE_PIECE, False)


def dot_dtype(x: torch.Tensor) -> torch.dtype:
    """Element type of boundary states and matmul operands for inputs like `x` (see module doc)."""
    return torch.bfloat16 if x.dtype == torch.bfloat16 and x.is_cuda else torch.float32


def pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))
