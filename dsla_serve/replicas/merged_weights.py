"""Merged projection weights for the CUDA forward pass: one GEMM where the model has several.

At batch sizes of a decode step a projection is a matrix-vector product whose launch and ramp-up cost
is a good part of its time, and at prefill one wide GEMM reads the input once: q/k/v become one GEMM
in a softmax layer, q/k/v plus the gate projections one GEMM in a DSLA layer
(`DSLAAttention.projection_linears`), the MLP's gate/up one GEMM. The stacked weight is made once and
the original `nn.Linear` modules are re-pointed at views of it, so no memory is duplicated and the
model (and the DSLA twins that share q/k/v) computes exactly what it did: each Linear still owns its
rows, only the storage is shared, and parameter names and saved layouts do not change. Weights that
already are consecutive rows of one storage (q/k/v inside a DSLA layer's merge) are returned as a view,
so switching a layer between softmax and DSLA copies nothing. (A consequence: saving such a model with
safetensors needs the tensors cloned first, as safetensors refuses shared storage.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _consecutive(tensors: list[torch.Tensor]) -> bool:
    """Whether the contiguous tensors follow each other in one storage (so one view spans them)."""
    t0 = tensors[0]
    offset = t0.storage_offset()
    for t in tensors:
        if (not t.is_contiguous() or t.untyped_storage().data_ptr() != t0.untyped_storage().data_ptr()
                or t.storage_offset() != offset):
            return False
        offset += t.numel()
    return True


def merge_linears(linears: Sequence[nn.Module]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Stack the weights (and biases) of `linears` along out_features into one storage.

    Returns (weight [sum out, in], bias [sum out] or None): F.linear(x, weight, bias) is the
    concatenation of each Linear's output. A Linear without a bias gets zeros there when others have
    one. None when the Linears cannot share one GEMM (not plain Linears, different dtypes, devices or
    input sizes).
    """
    if not linears or not all(type(m) is nn.Linear for m in linears):
        return None
    w0 = linears[0].weight
    if any(m.weight.dtype != w0.dtype or m.weight.device != w0.device or m.in_features != linears[0].in_features
           for m in linears):
        return None
    total = sum(m.out_features for m in linears)
    with torch.no_grad():
        if _consecutive([m.weight for m in linears]):
            weight = w0.detach().as_strided((total, w0.shape[1]), (w0.shape[1], 1), w0.storage_offset())
        else:
            weight = torch.cat([m.weight for m in linears], dim=0)
            row = 0
            for m in linears:
                m.weight.data = weight[row:row + m.out_features]
                row += m.out_features
        bias = None
        if any(m.bias is not None for m in linears):
            if all(m.bias is not None for m in linears) and _consecutive([m.bias for m in linears]):
                b0 = linears[0].bias
                bias = b0.detach().as_strided((total,), (1,), b0.storage_offset())
            else:
                bias = torch.cat([m.bias if m.bias is not None else w0.new_zeros(m.out_features) for m in linears])
                row = 0
                for m in linears:
                    if m.bias is not None:
                        m.bias.data = bias[row:row + m.out_features]
                    row += m.out_features
    return weight, bias
