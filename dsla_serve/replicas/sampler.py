"""Choose the next token of every row of a batch, and report log-probabilities when asked.

Sampling is by inverse CDF: each sampled row draws one uniform number from its request's own CPU
generator, so a seeded request picks the same tokens whatever else shares its batch, and the batch is
sampled with a handful of batched GPU ops (no per-row kernels). Greedy rows take the argmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .sampling import SamplingParams

TokenLogprobs = dict[int, float]  # token id -> log-probability
PROMPT_LOGPROBS_ROWS = 1024


@torch.no_grad()
def sample(logits: torch.Tensor, params: Sequence[SamplingParams],
           generators: Sequence[torch.Generator]) -> tuple[list[int], list[TokenLogprobs | None]]:
    """Pick one token per row.

    Args:
        logits: [B, V] next-token logits (any float dtype, any device).
        params: B sampling parameters, one per row.
        generators: B CPU generators, one per row (only sampled rows draw from theirs).

    Returns:
        (tokens, logprobs): B token ids, and for each row either None or {token: log-probability} of
        the `logprobs` most likely tokens plus the chosen one (log_softmax of the raw logits).
    """
    chosen = logits.argmax(dim=-1)  # = the argmax of the float32 copy (the cast is exact): no copy for greedy
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    if sampled or any(p.logprobs is not None for p in params):
        logits = logits.float()
    if sampled:
        chosen[sampled] = _sample_rows(logits[sampled], [params[i] for i in sampled],
                                       [generators[i] for i in sampled])
    logprobs = _token_logprobs(logits, chosen, [p.logprobs for p in params])
    return chosen.tolist(), logprobs


def _sample_rows(logits: torch.Tensor, params: Sequence[SamplingParams],
                 generators: Sequence[torch.Generator]) -> torch.Tensor:
    """logits [R, V] -> [R] sampled ids, with temperature, top-k and top-p per row."""
    R, V = logits.shape
    dev = logits.device
    temperature = torch.tensor([p.temperature for p in params], device=dev, dtype=torch.float32)
    logits = logits / temperature[:, None]
    top_k = [p.top_k_or_none or V for p in params]
    top_p = [float(p.top_p) for p in params]
    order = None
    if any(k < V for k in top_k) or any(p < 1 for p in top_p):
        logits, order = logits.sort(dim=-1, descending=True, stable=True)
        probs = torch.softmax(logits, dim=-1)
        rank = torch.arange(V, device=dev)[None, :]
        keep = rank < torch.tensor(top_k, device=dev)[:, None]
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens
        keep &= mass_before < torch.tensor(top_p, device=dev)[:, None]
        probs = probs * keep
    else:
        probs = torch.softmax(logits, dim=-1)
    cdf = probs.cumsum(dim=-1)
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators]).to(dev, torch.float32)
    # a u just under 1 must not land past the last kept token through rounding
    target = u[:, None] * cdf[:, -1:] * (1 - 1e-6)
    pick = torch.searchsorted(cdf, target, right=True).clamp_(max=V - 1)
    return (order.gather(1, pick) if order is not None else pick).squeeze(1)


def _token_logprobs(logits: torch.Tensor, chosen: torch.Tensor,
                    wanted: Sequence[int | None]) -> list[TokenLogprobs | None]:
    """Top-n log-probabilities (n = wanted[row], None = not asked) plus the chosen token's, per row."""
    if all(n is None for n in wanted):
        return [None] * len(wanted)
    lp = torch.log_softmax(logits, dim=-1)
    n_max = max(n for n in wanted if n is not None)
    chosen_lp = lp.gather(1, chosen[:, None])[:, 0].tolist()
    top_v, top_i = (lp.topk(n_max, dim=-1) if n_max > 0 else (lp[:, :0], chosen[:, None][:, :0]))
    top_v, top_i, ids = top_v.tolist(), top_i.tolist(), chosen.tolist()
    out: list[TokenLogprobs | None] = []
    for row, n in enumerate(wanted):
        if n is None:
            out.append(None)
            continue
        entry = {int(t): float(v) for t, v in zip(top_i[row][:n], top_v[row][:n])}
        entry[int(ids[row])] = float(chosen_lp[row])
        out.append(entry)
    return out


@torch.no_grad()
def prompt_logprobs(logits: torch.Tensor, targets: torch.Tensor, n: int) -> list[TokenLogprobs]:
    """Log-probabilities of prompt tokens.

    Args:
        logits: [T, V] logits at T prompt positions.
        targets: [T] the token that follows each position (the next prompt token).
        n: also report the n most likely tokens at each position.

    Returns:
        T dicts {token: log-probability}, each holding the target and the top n.
    """
    out: list[TokenLogprobs] = []
    for lo in range(0, logits.shape[0], PROMPT_LOGPROBS_ROWS):  # bounded fp32 copies of [rows, V]
        part, tgt = logits[lo:lo + PROMPT_LOGPROBS_ROWS], targets[lo:lo + PROMPT_LOGPROBS_ROWS]
        lp = torch.log_softmax(part.float(), dim=-1)
        target_lp = lp.gather(1, tgt[:, None].to(lp.device))[:, 0].tolist()
        if n > 0:
            top_v, top_i = (x.tolist() for x in lp.topk(n, dim=-1))
        else:
            top_v = top_i = [[] for _ in target_lp]
        for t, tok in enumerate(tgt.tolist()):
            entry = {int(i): float(v) for i, v in zip(top_i[t], top_v[t])}
            entry[int(tok)] = float(target_lp[t])
            out.append(entry)
    return out
