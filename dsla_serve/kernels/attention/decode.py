"""Softmax attention of one new token per sequence over its slot of the KV cache (the decode step).

`decode_attention` reads the keys/values of each sequence in place (no gather) with a split-K Triton
kernel on CUDA, whose bounds come from device tensors, so one CUDA graph serves every length up to
`max_len`; elsewhere (CPU, `DSLA_BACKEND=torch`) a PyTorch form gathers the slots and calls SDPA.
Both compute the same function.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
                     lengths: torch.Tensor, scale: float, max_len: int) -> torch.Tensor:
    """Attention of the newest token of each sequence over its cached keys/values.

    Args:
        q: [B, H, D] queries (rotary embedding already applied).
        k_cache, v_cache: [P, Hk, L, D] per-slot caches, Hk divides H (query head h reads h // (H // Hk)).
        slots: [B] int64, the cache slot of each row.
        lengths: [B] int32/int64, keys 0..lengths[b]-1 of row b are attended (>= 1).
        scale: score scale (head_dim ** -0.5 for Llama-family models).
        max_len: an upper bound on `lengths` known on the host (static under CUDA graphs).

    Returns:
        o: [B, H, D] in q's dtype.
    """
    if _triton_wanted(q):
        from .decode_triton import decode_attention_triton
        return decode_attention_triton(q, k_cache, v_cache, slots, lengths, scale, max_len)
    return decode_attention_torch(q, k_cache, v_cache, slots, lengths, scale, max_len)


def _triton_wanted(q: torch.Tensor) -> bool:
    if os.environ.get("DSLA_BACKEND", "auto") == "torch" or not q.is_cuda:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def decode_attention_torch(q, k_cache, v_cache, slots, lengths, scale, max_len):
    """PyTorch form of `decode_attention` (gathers the B slots' first max_len positions)."""
    B, H, D = q.shape
    n = min(max_len, k_cache.shape[2])
    k = k_cache[slots, :, :n]  # [B, Hk, n, D]
    v = v_cache[slots, :, :n]
    visible = torch.arange(n, device=q.device)[None, :] < lengths.to(q.device)[:, None]  # [B, n]
    o = F.scaled_dot_product_attention(q[:, :, None, :], k, v, attn_mask=visible[:, None, None, :],
                                       scale=scale, enable_gqa=k.shape[1] != H)
    return o[:, :, 0, :]
