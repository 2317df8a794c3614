"""`gemv`: y = W x (+ b) for one row, the matrix-vector product of a batch-1 decode step.

At one row every projection is bound by reading its weight once. cuBLAS's kernels for these shapes read
some weights well below the bandwidth (split-K variants plus a reduction kernel for the 4096-wide o
projection). Here each program owns BLOCK_N output rows of W [N, K] and streams them along K in
[BLOCK_N, BLOCK_K] tiles, multiplying by x elementwise and summing in float32 (no tensor cores: one row
has nothing to reuse). With `silu_mul_input` the input is the gated MLP's activation silu(x[:K]) *
x[K:], computed at the load and rounded as `silu_mul` rounds it, so the down projection needs no
activation kernel. Launch settings from an H100 sweep (benchmarks/RESULTS.md, 2026-12-07 19:37 UTC;
`benchmarks/decode_step.py --sweep` repeats it with this kernel).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gemv_kernel(X, W, B, Y, N, stride_w, K: tl.constexpr,
                 HAS_BIAS: tl.constexpr, SILU_MUL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = n < N
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        m_k = k < K
        x = tl.load(X + k, mask=m_k, other=0.0)
        if SILU_MUL:  # X holds [gate | up]; rounded as silu_mul rounds: silu in x's dtype, then the product
            xf = x.to(tl.float32)
            act = (xf / (1.0 + tl.exp(-xf))).to(x.dtype).to(tl.float32)
            x = (act * tl.load(X + K + k, mask=m_k, other=0.0).to(tl.float32)).to(x.dtype)
        w = tl.load(W + n[:, None] * stride_w + k[None, :], mask=m_n[:, None] & m_k[None, :], other=0.0,
                    eviction_policy="evict_first")  # read once: keep L2 for the activations
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(B + n, mask=m_n, other=0.0).to(tl.float32)
    tl.store(Y + n, y.to(Y.dtype.element_ty), mask=m_n)


def launch_settings(silu_mul_input: bool) -> dict:
    """BLOCK_N, BLOCK_K, warps and stages. H100 sweep of 12 settings: 4 rows x 1024 columns, 8 warps was
    the fastest at o, q/k/v, gate/up and lm_head; 4 x 512 with 4 warps at the down projection with its
    activation."""
    if silu_mul_input:
        return {"BLOCK_N": 4, "BLOCK_K": 512, "num_warps": 4, "num_stages": 3}
    return {"BLOCK_N": 4, "BLOCK_K": 1024, "num_warps": 8, "num_stages": 3}


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
         silu_mul_input: bool = False, settings: dict | None = None) -> torch.Tensor:
    """x [1, K'] -> [1, N] = input @ weight.T (+ bias) in x's dtype, accumulated in float32.

    input is x, or with `silu_mul_input` silu(x[:, :K]) * x[:, K:] (K' = 2K: the gated MLP's [gate | up]
    output). weight [N, K] with contiguous rows (an `nn.Linear` weight); bias [N] or None.
    `settings`: launch settings (default `launch_settings`).
    """
    N, K = weight.shape
    if x.dim() != 2 or x.shape[0] != 1:
        raise ValueError(f"gemv takes one row [1, K], got {tuple(x.shape)}")
    if x.shape[1] != (2 * K if silu_mul_input else K):
        raise ValueError(f"gemv: x has {x.shape[1]} columns for a weight of {K} input features"
                         + (" (silu_mul_input: 2 x in_features)" if silu_mul_input else ""))
    if weight.stride(1) != 1:
        raise ValueError("gemv: the weight's rows must be contiguous")
    x = x if x.stride(1) == 1 else x.contiguous()
    s = settings or launch_settings(silu_mul_input)
    y = torch.empty(1, N, device=x.device, dtype=x.dtype)
    _gemv_kernel[(triton.cdiv(N, s["BLOCK_N"]),)](
        x, weight, bias if bias is not None else weight, y, N, weight.stride(0), K=K,
        HAS_BIAS=bias is not None, SILU_MUL=silu_mul_input, BLOCK_N=s["BLOCK_N"], BLOCK_K=s["BLOCK_K"],
        num_warps=s["num_warps"], num_stages=s["num_stages"])
    return y
