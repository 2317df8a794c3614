"""`decode_linear`: y = x @ W^T + b for the few rows of a decode step, reading W once.

At a decode step's batch (1-16 rows) a projection is bound by reading its weight; cuBLAS's kernels for
these shapes read some weights well below the copy bandwidth (split-K variants plus a reduction kernel;
benchmarks/RESULTS.md). Here each program owns BLOCK_N output columns and streams their rows of W
[N, K] along K once, the x rows padded to 16 for a tensor-core `tl.dot` (the padding costs no
bandwidth), accumulating in float32. With `silu_mul_input` the input is the gated MLP's activation,
silu(x[:, :K]) * x[:, K:], computed at the load (rounded as `silu_mul` rounds it), so the MLP's down
projection needs no separate activation kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

MAX_ROWS = 16  # x rows one program holds (the tl.dot tile); more rows belong to a GEMM


class LinearConfig(NamedTuple):
    """Launch settings of `decode_linear` (benchmarks/decode_step.py sweeps them)."""
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


@triton.jit
def _decode_linear_kernel(X, W, B, Y, M, N, K, stride_xm, stride_wn, stride_ym,
                          HAS_BIAS: tl.constexpr, SILU_MUL: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    m = tl.arange(0, BLOCK_M)
    nmask = n < N
    mmask = m < M
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < K
        x = tl.load(X + m[:, None] * stride_xm + k[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
        if SILU_MUL:  # x holds [gate | up]: the input is silu(gate) * up, rounded as silu_mul rounds it
            u = tl.load(X + m[:, None] * stride_xm + K + k[None, :], mask=mmask[:, None] & kmask[None, :],
                        other=0.0)
            xf = x.to(tl.float32)
            act = (xf / (1.0 + tl.exp(-xf))).to(x.dtype).to(tl.float32)
            x = (act * u.to(tl.float32)).to(x.dtype)
        w = tl.load(W + n[:, None] * stride_wn + k[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0)
        acc += tl.dot(x, tl.trans(w), input_precision=PRECISION)  # [BLOCK_M, BLOCK_N]
    if HAS_BIAS:
        acc += tl.load(B + n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + m[:, None] * stride_ym + n[None, :], acc.to(Y.dtype.element_ty),
             mask=mmask[:, None] & nmask[None, :])


def default_config(rows: int, n: int, k: int) -> LinearConfig:
    """Launch settings for x [rows, k] @ W[n, k]^T on an H100-class GPU (from the decode_step sweep)."""
    return LinearConfig(block_n=16, block_k=256, num_warps=4, num_stages=4)


def decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  silu_mul_input: bool = False, config: LinearConfig | None = None) -> torch.Tensor:
    """x [M, K'] -> [M, N] = input @ weight.T (+ bias), M <= MAX_ROWS, in x's dtype.

    `input` is x, or with `silu_mul_input` silu(x[:, :K]) * x[:, K:] (K' = 2K, the gated MLP's
    [gate | up] projection output). weight: [N, K] with contiguous rows (an `nn.Linear` weight or a
    row slice of one); bias: [N] or None; x any strides. Accumulates in float32, like F.linear.
    """
    M = x.shape[0]
    N, K = weight.shape
    if not 1 <= M <= MAX_ROWS:
        raise ValueError(f"decode_linear takes 1..{MAX_ROWS} rows, got {M}")
    if x.shape[1] != (2 * K if silu_mul_input else K):
        raise ValueError(f"x has {x.shape[1]} columns for a weight of {K} input features"
                         + (" (silu_mul_input: 2 x in_features)" if silu_mul_input else ""))
    if weight.stride(1) != 1:
        raise ValueError("decode_linear: the weight's rows must be contiguous")
    x = x if x.stride(1) == 1 else x.contiguous()
    cfg = config or default_config(M, N, K)
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"  # ignored for 16-bit inputs
    _decode_linear_kernel[(triton.cdiv(N, cfg.block_n),)](
        x, weight, bias if bias is not None else weight, y, M, N, K, x.stride(0), weight.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, SILU_MUL=silu_mul_input, BLOCK_M=MAX_ROWS, BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, PRECISION=precision, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return y
