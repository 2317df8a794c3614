"""Reference DSLA: the token-by-token recurrence of docs/design.md, written to read like the spec."""

from __future__ import annotations

import torch

from .gates import log_decays
from .inputs import accumulation_dtype


def naive_dsla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g1: torch.Tensor,
    g2: torch.Tensor,
    mix: torch.Tensor,
    scale: float | None = None,
    initial_state: tuple[torch.Tensor, torch.Tensor] | None = None,
    output_final_state: bool = False,
    gate_logit_normalizer: float | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Dual-state gated linear attention, one token at a time.

    Args:
        q: [B, T, H, K] queries.
        k: [B, T, Hk, K] keys, Hk divides H (GQA: query head h reads key head h // (H // Hk)).
        v: [B, T, Hk, V] values.
        g1, g2: [B, T, H, K] log-decays (<= 0) of the history and recency states.
        mix: [2] or [H, 2] non-negative read-out weights of the two states.
        scale: query scale, default K ** -0.5.
        initial_state: optional pair (s1, s2), each [B, H, K, V]; None means zeros.
        output_final_state: return the final pair of states.
        gate_logit_normalizer: None, or tau: g1/g2 are gate logits x, the log-decays logsigmoid(x) / tau.

    Returns:
        o: [B, T, H, V] in q's dtype, and (s1, s2) each [B, H, K, V] fp32 (fp64 for fp64 inputs)
        when output_final_state, else None.
    """
    B, T, H, K = q.shape
    Hk, V = k.shape[2], v.shape[-1]
    if H % Hk != 0:
        raise ValueError(f"query heads ({H}) must be a multiple of key/value heads ({Hk})")
    scale = K**-0.5 if scale is None else scale
    out_dtype = q.dtype
    acc = accumulation_dtype(q.dtype)
    g1, g2 = log_decays(g1, g2, gate_logit_normalizer)
    group = H // Hk
    q, g1, g2 = q.to(acc), g1.to(acc), g2.to(acc)
    k = k.to(acc).repeat_interleave(group, dim=2)
    v = v.to(acc).repeat_interleave(group, dim=2)
    m = mix.to(acc).expand(H, 2) if mix.dim() == 2 else mix.to(acc).view(1, 2).expand(H, 2)
    m1, m2 = m[:, 0].view(1, H, 1), m[:, 1].view(1, H, 1)

    if initial_state is None:
        s1 = q.new_zeros(B, H, K, V)
        s2 = q.new_zeros(B, H, K, V)
    else:
        s1, s2 = (s.to(acc) for s in initial_state)

    outputs = []
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]  # k_t^T v_t: [B, H, K, V]
        s1 = torch.exp(g1[:, t])[..., None] * s1 + kv
        s2 = torch.exp(g2[:, t])[..., None] * s2 + kv
        qs = scale * q[:, t]  # [B, H, K]
        o1 = torch.einsum("bhk,bhkv->bhv", qs, s1)
        o2 = torch.einsum("bhk,bhkv->bhv", qs, s2)
        outputs.append(m1 * o1 + m2 * o2)
    o = torch.stack(outputs, dim=1) if T > 0 else q.new_zeros(B, 0, H, V)
    return o.to(out_dtype), ((s1, s2) if output_final_state else None)
