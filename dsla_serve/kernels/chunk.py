"""Chunked DSLA in PyTorch: the parallel form for prefill and training (autograd through torch ops).

Both states in one pass. Because o_t = m_1 (s q_t) S1_t + m_2 (s q_t) S2_t and both states add the
same k_t^T v_t, DSLA is one gated linear attention with key dimension 2K:

    q' = s [m_1 q, m_2 q],   k' = [k, k],   g' = [g1, g2],   S' = [S1; S2]  (2K x V)

so one pass over q/k/v computes both states, and the mix is a scaling of the query.

Within a chunk of C tokens, with b_t = sum_{u <= t} g'_u the cumulative log-decay from the chunk
start (<= 0, non-increasing in t):

    S'_t = diag(exp(b_t)) S'_0 + sum_{s <= t} diag(exp(b_t - b_s)) k'_s^T v_s
    o_t  = (q'_t * exp(b_t)) S'_0  +  sum_{s <= t} [sum_k q'_t[k] k'_s[k] exp(b_t[k] - b_s[k])] v_s

The first term reads the state carried in from earlier chunks (one sequential loop over chunks);
the second is attention-like (intra-chunk), computed in one of two forms:

- factorized, exp(b_t - b_s) = exp(b_t) * exp(-b_s): two plain matmuls. Taken only when every
  chunk's total log-decay stays above -FACTORIZE_MAX_LOG_DECAY, so exp(-b_s) cannot overflow.
- sub-chunked (any decay): for query sub-chunk i (16 tokens) and earlier key positions s, the
  factor is split at r_i, the last position before sub-chunk i, into exp(b_t - b_r) * exp(b_r - b_s),
  both <= 1, again a matmul; only the 16x16 diagonal blocks need the explicit per-channel
  [16, 16, 2K] decay tensor, masked before exp.

Cumulative sums restart at every chunk, and apart from the bounded factorized case exp is only
taken of differences b_later - b_earlier <= 0, so nothing overflows however strong the decays or
long the sequence. GQA: the H query heads are viewed as [Hk, G] and k/v broadcast over the group
axis G (query head h reads key head h // G).
"""

from __future__ import annotations

import torch

from .inputs import VarlenLayout, accumulation_dtype, check_inputs, mix_weights

SUB_CHUNK = 16
# Largest total log-decay of a chunk (over all channels, both states) for which the intra-chunk
# term is computed in factorized form, exp(b_t) * exp(-b_s): exp(30) ~ 1e13 keeps fp32 far from
# overflow and underflow. Realistic gates (logsigmoid(.) / 16) stay well below; stronger decays take
# the sub-chunked form, which only ever exponentiates differences <= 0.
FACTORIZE_MAX_LOG_DECAY = 30.0


def chunk_dsla_torch(q, k, v, g1, g2, mix, scale=None, initial_state=None, output_final_state=False,
                     cu_seqlens=None, chunk_size=64):
    """Chunked dual-state gated linear attention (the function `naive_dsla` computes).

    Args:
        q: [B, T, H, K]; k: [B, T, Hk, K]; v: [B, T, Hk, V], Hk divides H.
        g1, g2: [B, T, H, K] log-decays (<= 0) of the history and recency states.
        mix: [2] or [H, 2] read-out weights of the two states.
        scale: query scale, default K ** -0.5.
        initial_state: optional pair (s1, s2), each [N, H, K, V]; None means zeros.
        output_final_state: also return the final pair of states.
        cu_seqlens: optional [N + 1] int offsets of N packed sequences (B must be 1); the states
            restart at each boundary and initial/final states are per sequence.
        chunk_size: tokens per chunk, a positive multiple of 16.

    Returns:
        o [B, T, H, V] in q's dtype, and (s1, s2) each [N, H, K, V] fp32 (fp64 for fp64 inputs) if
        output_final_state, else None. N = B, or the number of sequences with cu_seqlens.
    """
    check_inputs(q, k, v, g1, g2, mix, initial_state, cu_seqlens, op="chunk_dsla")
    if chunk_size <= 0 or chunk_size % SUB_CHUNK:
        raise ValueError(f"chunk_dsla: chunk_size must be a positive multiple of {SUB_CHUNK}, got {chunk_size}")
    if cu_seqlens is not None:
        layout = VarlenLayout.from_cu_seqlens(cu_seqlens)
        padded = [layout.pad(x) for x in (q, k, v, g1, g2)]
        o, state = _chunk_dense(*padded, mix, scale, initial_state, chunk_size)
        return layout.unpad(o), (state if output_final_state else None)
    o, state = _chunk_dense(q, k, v, g1, g2, mix, scale, initial_state, chunk_size)
    return o, (state if output_final_state else None)


def _chunk_dense(q, k, v, g1, g2, mix, scale, initial_state, chunk_size):
    """Chunked DSLA over a dense batch; returns (o [B, T, H, V] in q's dtype, (s1, s2) [B, H, K, V])."""
    B, T, H, K = q.shape
    Hk, V = k.shape[2], v.shape[3]
    G = H // Hk
    out_dtype, acc = q.dtype, accumulation_dtype(q.dtype)
    scale = K**-0.5 if scale is None else scale
    if initial_state is None:
        state = q.new_zeros(B, Hk, G, 2 * K, V, dtype=acc)
    else:  # (s1, s2) [B, H, K, V] -> S' [B, Hk, G, 2K, V]
        state = torch.cat([s.to(acc) for s in initial_state], dim=2).view(B, Hk, G, 2 * K, V)
    if T == 0:
        return q.new_zeros(B, 0, H, V), _split_state(state, H)

    # Pad T up to whole chunks. Padded tokens (k = v = 0, g = 0) leave the states unchanged.
    C = min(chunk_size, -(-T // SUB_CHUNK) * SUB_CHUNK)
    NC = -(-T // C)
    pad = NC * C - T

    def blocks(x, heads, group):  # [B, T, heads*group, D] -> [B, heads, group, NC, C, D] in acc, contiguous
        x = torch.nn.functional.pad(x.to(acc), (0, 0, 0, 0, 0, pad))
        return x.reshape(B, NC, C, heads, group, x.shape[-1]).permute(0, 3, 4, 1, 2, 5).contiguous()

    m = mix_weights(mix, H, acc).reshape(Hk, G, 1, 1, 2, 1) * scale
    q = (blocks(q, Hk, G).unsqueeze(-2) * m).flatten(-2)  # q' = s [m1 q, m2 q]: [B, Hk, G, NC, C, 2K]
    k = blocks(k, Hk, 1).repeat(1, 1, 1, 1, 1, 2)  # k' = [k, k]: [B, Hk, 1, NC, C, 2K]
    v = blocks(v, Hk, 1)  # [B, Hk, 1, NC, C, V]
    g = torch.cat([blocks(g1, Hk, G), blocks(g2, Hk, G)], dim=-1)  # g' = [g1, g2]: [B, Hk, G, NC, C, 2K]
    b = g.cumsum(dim=-2)  # cumulative log-decay from the chunk start, <= 0, non-increasing in t
    b_last = b[..., -1:, :]  # [B, Hk, G, NC, 1, 2K]: log-decay over the whole chunk
    decay_from_start = torch.exp(b)
    factorized = float(-b_last.detach().min()) <= FACTORIZE_MAX_LOG_DECAY

    # Each chunk's own contribution to the state at its end: sum_s diag(exp(b_last - b_s)) k_s^T v_s.
    if factorized:
        k_grown = k / decay_from_start  # k_s * exp(-b_s), at most exp(FACTORIZE_MAX_LOG_DECAY) * k_s
        chunk_kv = torch.exp(b_last).transpose(-1, -2) * (k_grown.transpose(-1, -2) @ v)
    else:
        chunk_kv = (k * torch.exp(b_last - b)).transpose(-1, -2) @ v  # [B, Hk, G, NC, 2K, V]
    chunk_decay = torch.exp(b_last).transpose(-1, -2)  # [B, Hk, G, NC, 2K, 1]
    starts = []
    for n in range(NC):
        starts.append(state)
        state = chunk_decay[..., n, :, :] * state + chunk_kv[..., n, :, :]
    start_states = torch.stack(starts, dim=3)  # [B, Hk, G, NC, 2K, V]: state before each chunk

    q_decayed = q * decay_from_start  # q'_t * exp(b_t)
    o = q_decayed @ start_states  # [B, Hk, G, NC, C, V]
    if factorized:
        o = o + torch.tril(q_decayed @ k_grown.transpose(-1, -2)) @ v
    else:
        o = o + _intra_chunk_subchunked(q, k, v, b)
    o = o.permute(0, 3, 4, 1, 2, 5).reshape(B, NC * C, H, V)[:, :T]
    return o.to(out_dtype).contiguous(), _split_state(state, H)


def _intra_chunk_subchunked(q, k, v, b):
    """sum_{s <= t in the same chunk} [sum_k q_t[k] k_s[k] exp(b_t[k] - b_s[k])] v_s, for any decays.

    q [B, Hk, G, NC, C, 2K], k [B, Hk, 1, NC, C, 2K], v [B, Hk, 1, NC, C, V], b [B, Hk, G, NC, C, 2K]
    ->  [B, Hk, G, NC, C, V].
    """
    *lead, C, _ = b.shape
    c = SUB_CHUNK
    ns = C // c
    sub = lambda x: x.reshape(*x.shape[:-2], ns, c, x.shape[-1])  # noqa: E731  [..., C, D] -> [..., ns, c, D]
    q_s, k_s, v_s, b_s = sub(q), sub(k), sub(v), sub(b)
    neg_inf = torch.tensor(float("-inf"), dtype=b.dtype, device=b.device)

    # Diagonal 16x16 blocks: explicit per-channel decay exp(b_t - b_s) for s <= t (masked before exp,
    # so no positive exponent is ever evaluated and the backward never sees inf * 0).
    causal = torch.ones(c, c, dtype=torch.bool, device=b.device).tril().unsqueeze(-1)  # [t, s, 1]
    diff = b_s.unsqueeze(-2) - b_s.unsqueeze(-3)  # [..., ns, t, s, 2K]
    decay = torch.exp(torch.where(causal, diff, neg_inf))
    scores = ((k_s.unsqueeze(-3) * decay) @ q_s.unsqueeze(-1)).squeeze(-1)  # [..., ns, t, s]
    o = scores @ v_s  # [..., ns, c, V]

    if ns > 1:
        # Earlier sub-chunks of the same chunk, through the reference position r_i = i*c - 1.
        b_ref = torch.cat([b[..., :1, :], b_s[..., :-1, -1, :]], dim=-2)  # [..., ns, 2K]; row 0 unused
        q_ref = q_s * torch.exp(b_s - b_ref.unsqueeze(-2))  # exp(b_t - b_r), t > r
        before = torch.arange(C, device=b.device) < (torch.arange(ns, device=b.device) * c).unsqueeze(-1)
        before = before.unsqueeze(-1)  # [ns, C, 1]: key position s precedes sub-chunk i
        ref_diff = b_ref.unsqueeze(-2) - b.unsqueeze(-3)  # [..., ns, C, 2K]: b_r - b_s
        k_ref = k.unsqueeze(-3) * torch.exp(torch.where(before, ref_diff, neg_inf))
        scores = q_ref @ k_ref.transpose(-1, -2)  # [..., ns, c, C]
        o = o + scores @ v.unsqueeze(-3)
    return o.reshape(*lead, C, o.shape[-1])


def _split_state(state: torch.Tensor, H: int):
    """S' [B, Hk, G, 2K, V] -> (s1, s2), each [B, H, K, V] contiguous."""
    B, _, _, K2, V = state.shape
    s = state.reshape(B, H, 2, K2 // 2, V)
    return s[:, :, 0].contiguous(), s[:, :, 1].contiguous()
