"""`silu_mul`: the gated MLP's activation silu(gate) * up."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _silu_mul_kernel(G, U, Out, n_cols, stride_g, stride_u, stride_o, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0)
    gf = g.to(tl.float32)
    act = (gf / (1.0 + tl.exp(-gf))).to(g.dtype).to(tl.float32)  # silu, rounded as F.silu
    tl.store(Out + row * stride_o + cols, (act * u.to(tl.float32)).to(Out.dtype.element_ty), mask=mask)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for [N, F] tensors (the Llama-family MLP's activation)."""
    N, F = gate.shape
    out = torch.empty_like(gate)
    BLOCK = 1024
    _silu_mul_kernel[(N, triton.cdiv(F, BLOCK))](gate, up, out, F, gate.stride(0), up.stride(0), out.stride(0),
                                                  BLOCK=BLOCK, num_warps=4)
    return out
