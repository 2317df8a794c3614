"""`add_rmsnorm`: residual add + RMSNorm in one pass over each row."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rmsnorm_kernel(H, A, W, Hout, Y, stride_h, stride_a, stride_ho, stride_y, eps, n_cols,
                        HAS_ADD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    h = tl.load(H + row * stride_h + cols, mask=mask, other=0.0)
    if HAS_ADD:
        a = tl.load(A + row * stride_a + cols, mask=mask, other=0.0)
        h = (h.to(tl.float32) + a.to(tl.float32)).to(H.dtype.element_ty)  # residual add, rounded
        tl.store(Hout + row * stride_ho + cols, h, mask=mask)
    x = h.to(tl.float32)
    var = tl.sum(x * x, axis=0) / n_cols
    normed = (x * (1.0 / tl.sqrt(var + eps))).to(H.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (w * normed).to(Y.dtype.element_ty), mask=mask)


def add_rmsnorm(h: torch.Tensor, a: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """h, a: [N, hidden] -> (h + a, rmsnorm(h + a) * weight), both [N, hidden] in h's dtype.

    With a=None: (h, rmsnorm(h) * weight). Same function as HF's `LlamaRMSNorm` on the (rounded) sum.
    """
    N, C = h.shape
    y = torch.empty_like(h)
    out = torch.empty_like(h) if a is not None else h
    _add_rmsnorm_kernel[(N,)](h, a if a is not None else h, weight, out, y, h.stride(0),
                              (a if a is not None else h).stride(0), out.stride(0), y.stride(0), float(eps), C,
                              HAS_ADD=a is not None, BLOCK=triton.next_power_of_2(C), num_warps=8 if C >= 4096 else 4)
    return out, y
