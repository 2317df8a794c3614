"""Merged projection weights for the CUDA forward pass: q/k/v as one GEMM, MLP gate/up as one GEMM.

At batch sizes of a decode step a projection is a matrix-vector product whose launch and ramp-up cost
is a good part of its time; one product over the stacked weights replaces three (q, k, v) or two (gate,
up). The stacked weight is made once and the original `nn.Linear` modules are re-pointed at views of
it, so no memory is duplicated and the model (and the DSLA twins that share q/k/v) computes exactly
what it did: each Linear still owns its rows, only the storage is shared. (A consequence: saving such
a model with safetensors needs the tensors cloned first, as safetensors refuses shared storage.)
"""

from __future__ import annotations

import torch
from torch import nn

_ATTR = "_dsla_serve_merged"


def merge_linears(owner: nn.Module, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Stack the weights (and biases) of `owner`'s Linears `names` along out_features into one storage.

    Returns (weight [sum out, in], bias [sum out] or None), cached on `owner`; None when the Linears
    cannot share one (not plain Linears, different dtypes/devices/input sizes, biases on some only).
    """
    linears = [getattr(owner, n, None) for n in names]
    cached = getattr(owner, _ATTR, {}).get(names)
    if cached is not None and linears[0].weight.data_ptr() == cached[0].data_ptr():
        return cached  # (a `.to()` since would have given the Linears new storage: merge again)
    if not all(type(m) is nn.Linear for m in linears):
        return None
    w0 = linears[0].weight
    if any(m.weight.dtype != w0.dtype or m.weight.device != w0.device or m.in_features != linears[0].in_features
           for m in linears):
        return None
    has_bias = [m.bias is not None for m in linears]
    if any(has_bias) and not all(has_bias):
        return None
    with torch.no_grad():
        weight = torch.cat([m.weight for m in linears], dim=0)
        bias = torch.cat([m.bias for m in linears], dim=0) if all(has_bias) else None
        row = 0
        for m in linears:
            n = m.out_features
            m.weight.data = weight[row:row + n]
            if bias is not None:
                m.bias.data = bias[row:row + n]
            row += n
    merged = (weight, bias)
    owner.__dict__.setdefault(_ATTR, {})[names] = merged
    return merged
