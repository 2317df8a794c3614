"""Decode entry points: `recurrent_dsla_triton` (explicit states, any T) and
`recurrent_dsla_pool_triton` (one step for a batch whose states live in a pool, updated in place)."""

from __future__ import annotations

import torch

from ..inputs import cu_seqlens_tensor
from .checks import check_states, check_tensors, mix_table
from .chunk import chunk_dsla_triton, flat_gates
from .common import Gates, flat_tokens
from .recurrent import recurrent_forward


def recurrent_dsla_triton(q, k, v, g1, g2, mix, scale=None, initial_state=None, output_final_state=False,
                          cu_seqlens=None, gate_logit_normalizer: float | None = None):
    """Token-by-token DSLA (fast for decode, correct for any T). Arguments and returns as
    `chunk_dsla_triton`. When autograd needs gradients the call goes to the chunked kernels, which
    compute the same function and have a backward; this kernel is forward-only."""
    op = "recurrent_dsla_triton"
    grads = torch.is_grad_enabled() and any(
        isinstance(x, torch.Tensor) and x.requires_grad
        for x in (q, k, v, g1, g2, mix, *(initial_state or ())))
    if grads:
        return chunk_dsla_triton(q, k, v, g1, g2, mix, scale, initial_state, output_final_state, cu_seqlens,
                                 gate_logit_normalizer=gate_logit_normalizer)
    B, T, H, HK, K, V = check_tensors(op, q, k, v, g1, g2, mix)
    N = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"{op}: with cu_seqlens the batch size must be 1 (packed sequences), got B={B}")
        cu_seqlens = cu_seqlens_tensor(cu_seqlens).to(torch.int32)
        N = cu_seqlens.numel() - 1
    if initial_state is not None:
        check_states(op, "initial_state", initial_state, N, H, K, V)
        initial_state = tuple(s.contiguous() for s in initial_state)
    final = None
    if output_final_state:
        final = (q.new_empty(N, H, K, V, dtype=torch.float32), q.new_empty(N, H, K, V, dtype=torch.float32))
    scale = K**-0.5 if scale is None else float(scale)
    o = recurrent_forward(flat_tokens(q), flat_tokens(k), flat_tokens(v), *flat_gates(g1, g2),
                          Gates.of(g1, gate_logit_normalizer), mix_table(mix, H), scale,
                          N, T, initial_state, final, cu_seqlens=cu_seqlens)
    return o.view(B, T, H, V), final


def recurrent_dsla_pool_triton(q, k, v, g1, g2, mix, state_pool, slots, scale=None,
                               gate_logit_normalizer: float | None = None):
    """One decode step for B sequences whose states are rows `slots` of a pool, updated in place.

    Args:
        q, g1, g2: [B, 1, H, K]; k: [B, 1, HK, K]; v: [B, 1, HK, V]; mix: [2] or [H, 2]. Views with a
            token stride are read in place; g1/g2 are gate logits when `gate_logit_normalizer` is given
            (as `chunk_dsla_triton`).
        state_pool: pair (s1, s2), each [P, H, K, V] fp32 contiguous, P >= B.
        slots: [B] int32/int64 pool rows, distinct, on q's device.
    Returns:
        o [B, 1, H, V] in q's dtype. One kernel launch, no host synchronisation: capturable in a CUDA graph.
    """
    op = "recurrent_dsla_pool_triton"
    B, T, H, HK, K, V = check_tensors(op, q, k, v, g1, g2, mix)
    if T != 1:
        raise ValueError(f"{op}: one decode step takes T=1 tokens per sequence, got T={T}")
    check_states(op, "state_pool", state_pool, None, H, K, V)
    for i, s in enumerate(state_pool):
        if not s.is_contiguous():
            raise ValueError(f"{op}: state_pool[{i}] must be contiguous (it is updated in place)")
    if not isinstance(slots, torch.Tensor) or slots.shape != (B,) or slots.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{op}: slots must be an int32/int64 tensor [B={B}], got "
                         f"{tuple(slots.shape) if isinstance(slots, torch.Tensor) else type(slots).__name__}")
    if slots.device != q.device:
        raise ValueError(f"{op}: slots is on {slots.device} but q is on {q.device}")
    scale = K**-0.5 if scale is None else float(scale)
    o = recurrent_forward(flat_tokens(q), flat_tokens(k), flat_tokens(v), *flat_gates(g1, g2),
                          Gates.of(g1, gate_logit_normalizer), mix_table(mix, H), scale,
                          B, 1, state_pool, state_pool, slots=slots)
    return o.view(B, 1, H, V)
