"""Perplexity on held-out documents, overall and by the position of the predicted token in its window.

Each document is cut into non-overlapping windows of `context` tokens (a shorter tail is dropped, so
every window reaches the last bucket). In a window, the token at position t (1 <= t < context) is
predicted from positions 0..t-1; it counts in the bucket [lo, hi) that holds t. Perplexity is
exp(mean negative log-likelihood) over the counted tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .scoring import model_device

DEFAULT_BUCKETS = ((0, 256), (256, 1024), (1024, 4096))


def windows_of(documents: list[np.ndarray], context: int, max_windows: int | None = None) -> list[np.ndarray]:
    """Non-overlapping full windows of every document, taken round-robin over the documents (window 0 of
    each, then window 1 of each, ...) so that a `max_windows` cap still samples every document."""
    per_doc = [[d[i:i + context] for i in range(0, len(d) - context + 1, context)] for d in documents]
    out = []
    for k in range(max((len(w) for w in per_doc), default=0)):
        out.extend(w[k] for w in per_doc if k < len(w))
    return out[:max_windows] if max_windows else out


@torch.no_grad()
def token_nll(model, input_ids: torch.Tensor) -> torch.Tensor:
    """input_ids [B, T] -> [B, T - 1] fp32: nll[b, t - 1] = -log p(input_ids[b, t] | input_ids[b, :t])."""
    logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1]
    return F.cross_entropy(logits.float().transpose(1, 2), input_ids[:, 1:], reduction="none")


@dataclass
class PositionStats:
    """Running sums of nll per predicted-token position (index t = position t; position 0 unused)."""

    nll_sum: np.ndarray  # [context] float64
    count: np.ndarray  # [context] int64

    @classmethod
    def empty(cls, context: int) -> "PositionStats":
        return cls(np.zeros(context, dtype=np.float64), np.zeros(context, dtype=np.int64))

    def add(self, nll: torch.Tensor) -> None:
        """nll [B, T - 1] from `token_nll` on windows of length T."""
        T = nll.shape[1] + 1
        self.nll_sum[1:T] += nll.double().sum(0).cpu().numpy()
        self.count[1:T] += nll.shape[0]

    def summary(self, lo: int, hi: int) -> dict:
        n = int(self.count[lo:hi].sum())
        mean = float(self.nll_sum[lo:hi].sum() / n) if n else float("nan")
        return {"lo": lo, "hi": hi, "tokens": n, "nll": mean, "ppl": math.exp(mean) if n else float("nan")}


def perplexity(model, documents: list[np.ndarray], context: int = 4096,
               buckets=DEFAULT_BUCKETS, max_windows: int | None = None, batch_size: int = 4,
               curve_bin: int = 64, progress: bool = True) -> dict:
    """Perplexity of `model` on `documents` (1-D token arrays), overall, per bucket and as a curve.

    Returns {"context", "windows", "overall": {tokens, nll, ppl}, "buckets": [{lo, hi, tokens, nll,
    ppl}], "curve": {"position": [...], "nll": [...]}} where the curve is the mean nll over bins of
    `curve_bin` positions (for plotting). Buckets reaching past `context` are clipped to it.
    """
    from tqdm.auto import tqdm

    wins = windows_of(documents, context, max_windows)
    if not wins:
        longest = max((len(d) for d in documents), default=0)
        raise ValueError(f"no document has a full {context}-token window (longest has {longest} tokens); "
                         f"lower the context or use longer documents")
    device = model_device(model)
    stats = PositionStats.empty(context)
    for b in tqdm(range(0, len(wins), batch_size), desc=f"perplexity @{context}", unit="batch",
                  disable=not progress):
        batch = torch.as_tensor(np.stack(wins[b:b + batch_size]).astype(np.int64), device=device)
        stats.add(token_nll(model, batch))
    overall = stats.summary(1, context)
    bucket_rows = [stats.summary(max(lo, 1), min(hi, context)) | {"lo": lo, "hi": min(hi, context)}
                   for lo, hi in buckets if lo < context]
    starts = list(range(1, context, curve_bin))
    curve_nll = [stats.summary(s, min(s + curve_bin, context))["nll"] for s in starts]
    return {"context": context, "windows": len(wins),
            "overall": {k: overall[k] for k in ("tokens", "nll", "ppl")},
            "buckets": bucket_rows, "curve": {"position": starts, "nll": curve_nll}}
