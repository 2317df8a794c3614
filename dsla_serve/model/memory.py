"""Cache memory of a hybrid model at a given depth, for the demo and the engine's memory planner.

A softmax attention layer caches a key and a value per token: 2 * Hk * head_dim elements of the
cache dtype. A DSLA layer keeps two fp32 states per sequence whatever its length:
2 * H * K * V * 4 bytes (H query heads, K = V = head_dim).
"""

from __future__ import annotations

import torch
from torch import nn

from .surgery import conversion_order, decoder_layers

STATE_BYTES_PER_ELEMENT = 4  # DSLA states are fp32


def _dsla_set(model: nn.Module, depth: int) -> set[int]:
    order = conversion_order(model)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= len(order):
        raise ValueError(f"depth must be an int in [0, {len(order)}] (the number of converted layers), "
                         f"got {depth!r}")
    return set(order[:depth])


def _shape(attn: nn.Module) -> tuple[int, int, int]:
    """(query heads, key/value heads, head_dim) of a decoder layer's attention module."""
    head_dim = attn.head_dim
    return attn.q_proj.out_features // head_dim, attn.k_proj.out_features // head_dim, head_dim


def cache_bytes_per_token(model: nn.Module, depth: int, dtype: torch.dtype | None = None) -> int:
    """KV-cache bytes per token of one sequence, summed over the layers that are softmax attention at
    `depth` (the first `depth` layers of the conversion order are DSLA). `dtype`: that of the cached
    keys/values, default the model's parameter dtype."""
    dsla = _dsla_set(model, depth)
    if dtype is None:
        dtype = next(model.parameters()).dtype
    itemsize = torch.empty((), dtype=dtype).element_size()
    total = 0
    for i, layer in enumerate(decoder_layers(model)):
        if i not in dsla:
            _, kv_heads, head_dim = _shape(layer.self_attn)
            total += 2 * kv_heads * head_dim * itemsize
    return total


def dsla_state_bytes(model: nn.Module, depth: int) -> int:
    """Bytes of the DSLA states of one sequence at `depth` (fixed: independent of its length)."""
    blocks = decoder_layers(model)
    total = 0
    for i in sorted(_dsla_set(model, depth)):
        heads, _, head_dim = _shape(blocks[i].self_attn)
        total += 2 * heads * head_dim * head_dim * STATE_BYTES_PER_ELEMENT
    return total
