"""Step-form DSLA in PyTorch, for decode: one token at a time, both states updated together.

As in `chunk.py`, the two states are one gated linear attention with key dimension 2K
(q' = s [m_1 q, m_2 q], k' = [k, k], g' = [g1, g2], S' = [S1; S2]), with the query heads viewed as
[Hk, G] so that k/v broadcast over the GQA group. Per token:

    S' <- exp(g')[..., None] * S' + k'^T v
    o   = q' S'

A decode step (T = 1) is exactly one such update: a broadcast multiply-add and one batched matmul,
no loop over time. Longer inputs loop over tokens (correct for any T; use `chunk_dsla` for prefill).
"""

from __future__ import annotations

import torch

from .inputs import VarlenLayout, accumulation_dtype, check_inputs, mix_weights


def recurrent_dsla_torch(q, k, v, g1, g2, mix, scale=None, initial_state=None, output_final_state=False,
                         cu_seqlens=None):
    """Dual-state gated linear attention, token by token (same function as `naive_dsla`).

    Args:
        q: [B, T, H, K]; k: [B, T, Hk, K]; v: [B, T, Hk, V], Hk divides H.
        g1, g2: [B, T, H, K] log-decays (<= 0) of the history and recency states.
        mix: [2] or [H, 2] read-out weights of the two states.
        scale: query scale, default K ** -0.5.
        initial_state: optional pair (s1, s2), each [N, H, K, V]; None means zeros.
        output_final_state: also return the final pair of states.
        cu_seqlens: optional [N + 1] int offsets of N packed sequences (B must be 1); e.g. a decode
            step of N sequences packed as [1, N, H, K] with cu_seqlens = arange(N + 1).

    Returns:
        o [B, T, H, V] in q's dtype, and (s1, s2) each [N, H, K, V] fp32 (fp64 for fp64 inputs) if
        output_final_state, else None.
    """
    check_inputs(q, k, v, g1, g2, mix, initial_state, cu_seqlens, op="recurrent_dsla")
    if cu_seqlens is not None:
        layout = VarlenLayout.from_cu_seqlens(cu_seqlens)
        if layout.max_len == 1 and layout.num_seqs == q.shape[1]:  # one token per sequence: a batch
            padded = [x.transpose(0, 1) for x in (q, k, v, g1, g2)]
            o, state = _recurrent_dense(*padded, mix, scale, initial_state)
            return o.transpose(0, 1), (state if output_final_state else None)
        padded = [layout.pad(x) for x in (q, k, v, g1, g2)]
        o, state = _recurrent_dense(*padded, mix, scale, initial_state)
        return layout.unpad(o), (state if output_final_state else None)
    o, state = _recurrent_dense(q, k, v, g1, g2, mix, scale, initial_state)
    return o, (state if output_final_state else None)


@torch.no_grad()
def recurrent_dsla_pool_torch(q, k, v, g1, g2, mix, state_pool, slots, scale=None):
    """One decode step for a batch whose states live in a pool, updated in place (inference only).

    Args:
        q, g1, g2: [B, 1, H, K]; k: [B, 1, Hk, K]; v: [B, 1, Hk, V]; mix: [2] or [H, 2].
        state_pool: pair (s1, s2), each [P, H, K, V] float32 (or float64), P >= B.
        slots: [B] int64, the distinct pool row of each sequence.

    Returns:
        o [B, 1, H, V] in q's dtype. Rows `slots` of both pool tensors now hold the new states;
        every other row is untouched.
    """
    check_inputs(q, k, v, g1, g2, mix, op="recurrent_dsla_pool")
    B, T, H, K = q.shape
    Hk, V = k.shape[2], v.shape[3]
    if T != 1:
        raise ValueError(f"recurrent_dsla_pool: one decode step needs T = 1, got q of shape {tuple(q.shape)}")
    s1_pool, s2_pool = _check_pool(state_pool, slots, B, H, K, V, q.device)
    slots = slots.long()
    acc = s1_pool.dtype
    state = torch.cat([s1_pool.index_select(0, slots), s2_pool.index_select(0, slots)], dim=2)  # [B, H, 2K, V]
    o, state = _step(*_as_steps(q, k, v, g1, g2, mix, scale, acc), state.view(B, Hk, H // Hk, 2 * K, V), t=0)
    state = state.reshape(B, H, 2 * K, V)
    s1_pool.index_copy_(0, slots, state[:, :, :K])
    s2_pool.index_copy_(0, slots, state[:, :, K:])
    return o.reshape(B, 1, H, V).to(q.dtype)


def _recurrent_dense(q, k, v, g1, g2, mix, scale, initial_state):
    """Token loop over a dense batch; returns (o [B, T, H, V] in q's dtype, (s1, s2) [B, H, K, V])."""
    B, T, H, K = q.shape
    Hk, V = k.shape[2], v.shape[3]
    acc = accumulation_dtype(q.dtype)
    if initial_state is None:
        state = q.new_zeros(B, Hk, H // Hk, 2 * K, V, dtype=acc)
    else:  # (s1, s2) [B, H, K, V] -> S' [B, Hk, G, 2K, V]
        state = torch.cat([s.to(acc) for s in initial_state], dim=2).view(B, Hk, H // Hk, 2 * K, V)
    steps = _as_steps(q, k, v, g1, g2, mix, scale, acc)
    outputs = []
    for t in range(T):
        o_t, state = _step(*steps, state, t)
        outputs.append(o_t.reshape(B, H, V))
    o = torch.stack(outputs, dim=1) if T else q.new_zeros(B, 0, H, V)
    s = state.reshape(B, H, 2 * K, V)
    return o.to(q.dtype), (s[:, :, :K].contiguous(), s[:, :, K:].contiguous())


def _as_steps(q, k, v, g1, g2, mix, scale, acc):
    """[B, T, heads, D] inputs -> the 2K-wide single-state form, in `acc`:
    q' [B, T, Hk, G, 1, 2K] (scaled, mixed), k' [B, T, Hk, 1, 2K, 1], v [B, T, Hk, 1, 1, V],
    g' [B, T, Hk, G, 2K, 1]."""
    B, T, H, K = q.shape
    Hk, V = k.shape[2], v.shape[3]
    G = H // Hk
    scale = K**-0.5 if scale is None else scale
    m = mix_weights(mix, H, acc).reshape(Hk, G, 2, 1) * scale
    qs = (q.to(acc).reshape(B, T, Hk, G, 1, K) * m).reshape(B, T, Hk, G, 1, 2 * K)
    ks = k.to(acc).repeat(1, 1, 1, 2).reshape(B, T, Hk, 1, 2 * K, 1)
    vs = v.to(acc).reshape(B, T, Hk, 1, 1, V)
    gs = torch.cat([g1.to(acc), g2.to(acc)], dim=-1).reshape(B, T, Hk, G, 2 * K, 1)
    return qs, ks, vs, gs


def _step(q, k, v, g, state, t):
    """Advance S' [B, Hk, G, 2K, V] by token t; returns (o [B, Hk, G, 1, V], new S')."""
    state = torch.exp(g[:, t]) * state + k[:, t] * v[:, t]
    return q[:, t] @ state, state


def _check_pool(state_pool, slots, B, H, K, V, device):
    """Validate a state pool and its slots; returns the two pool tensors."""
    if not isinstance(state_pool, (tuple, list)) or len(state_pool) != 2:
        raise ValueError("recurrent_dsla_pool: state_pool must be a pair (s1, s2) of [P, H, K, V] tensors")
    s1, s2 = state_pool
    for name, s in (("state_pool[0]", s1), ("state_pool[1]", s2)):
        if not isinstance(s, torch.Tensor) or s.dim() != 4 or tuple(s.shape[1:]) != (H, K, V):
            shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(f"recurrent_dsla_pool: {name} must be [P, H={H}, K={K}, V={V}], got {shape}")
        if s.dtype not in (torch.float32, torch.float64) or s.dtype != s1.dtype:
            raise ValueError(f"recurrent_dsla_pool: both pool tensors must be float32 (or float64), got "
                             f"{s1.dtype} and {s2.dtype}")
        if s.device != device:
            raise ValueError(f"recurrent_dsla_pool: {name} is on {s.device} but q is on {device}")
    if s1.shape[0] != s2.shape[0]:
        raise ValueError(f"recurrent_dsla_pool: pool tensors have {s1.shape[0]} and {s2.shape[0]} rows")
    if not isinstance(slots, torch.Tensor) or slots.shape != (B,) or slots.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"recurrent_dsla_pool: slots must be an int64 tensor of shape [B={B}], got {slots!r}")
    if slots.device != device:
        raise ValueError(f"recurrent_dsla_pool: slots is on {slots.device} but q is on {device}")
    if B and not (slots.is_cuda and torch.cuda.is_current_stream_capturing()):
        P = s1.shape[0]
        if int(slots.min()) < 0 or int(slots.max()) >= P:
            raise ValueError(f"recurrent_dsla_pool: slots must lie in [0, {P}), got {slots.tolist()}")
        if torch.unique(slots).numel() != B:
            raise ValueError(f"recurrent_dsla_pool: slots must be distinct, got {slots.tolist()}")
    return s1, s2
