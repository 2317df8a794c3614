"""Does a model reproduce answer spans greedily? Checked in one forward pass per batch.

Greedy decoding emits an answer exactly when, with the correct prefix fed in (teacher forcing), the
argmax at every answer position is the answer token: the first wrong argmax is where greedy decoding
would leave the answer. So one forward pass replaces a decode loop, for any model, cache or not.
"""

from __future__ import annotations

import numpy as np
import torch


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def greedy_predictions(model, input_ids: torch.Tensor, keep_from: int) -> torch.Tensor:
    """input_ids [B, T] -> [B, T - keep_from] argmax next-token ids at positions keep_from..T-1.

    Only the logits that are needed are computed (`logits_to_keep`), so a 4k-token episode with a
    short answer at its end costs little more than its hidden states.
    """
    T = input_ids.shape[1]
    if not 0 <= keep_from < T:
        raise ValueError(f"keep_from must be in [0, {T}), got {keep_from}")
    logits = model(input_ids=input_ids, use_cache=False, logits_to_keep=T - keep_from).logits
    return logits.argmax(dim=-1)


def spans_correct(model, sequences: list[np.ndarray], spans: list[list[tuple[int, int]]], pad_id: int,
                  batch_size: int = 8) -> list[list[bool]]:
    """For each sequence and each (start, length) answer span in it: is the span predicted greedily?

    Sequences of different lengths are right-padded with `pad_id` (a causal model never looks right,
    so padding changes nothing before it). Returns the same nesting as `spans`.
    """
    if len(sequences) != len(spans):
        raise ValueError(f"{len(sequences)} sequences but {len(spans)} span lists")
    device = model_device(model)
    out: list[list[bool]] = []
    for b in range(0, len(sequences), batch_size):
        seqs, sp = sequences[b:b + batch_size], spans[b:b + batch_size]
        T = max(len(s) for s in seqs)
        batch = torch.full((len(seqs), T), pad_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            batch[i, :len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
        for s, spl in zip(seqs, sp):
            for start, length in spl:
                if start < 1 or start + length > len(s):
                    raise ValueError(f"answer span ({start}, {length}) lies outside a {len(s)}-token sequence")
        keep_from = min(start for spl in sp for start, _ in spl) - 1
        pred = greedy_predictions(model, batch.to(device), keep_from).cpu()
        for i, spl in enumerate(sp):
            row = []
            for start, length in spl:
                got = pred[i, start - 1 - keep_from:start - 1 - keep_from + length]
                row.append(bool(torch.equal(got, batch[i, start:start + length])))
            out.append(row)
    return out
