"""Validation of a model at a depth against the original model on held-out sequences, and
(`answer_divergence`) on held-out retrieval episodes.

Every process scores its share of the sequences (i, i + world, ...); sums are all-reduced, so all
processes return the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..model import set_depth
from .distributed import DistContext
from .losses import LayerOutputCapture, answer_kl, kl_teacher_student, next_token_ce, teacher_logits

if TYPE_CHECKING:  # pydantic-free at run time: the GPU image imports these modules without it
    from .config import LossWeights


@dataclass(frozen=True)
class Validation:
    """Per-token means over the validation sequences.

    ce / teacher_ce: next-token cross-entropy of the model at the depth / of the original model;
    kl: KL(teacher || model); mse: relative MSE of the newest layer's output (0 without a layer);
    objective: the distillation loss with the given weights.
    """

    ce: float
    teacher_ce: float
    kl: float
    mse: float
    objective: float
    sequences: int

    @property
    def ppl(self) -> float:
        return math.exp(self.ce)

    @property
    def teacher_ppl(self) -> float:
        return math.exp(self.teacher_ce)

    @property
    def ppl_ratio(self) -> float:
        return self.ppl / self.teacher_ppl


@torch.no_grad()
def validate(model: torch.nn.Module, depth: int, sequences: torch.Tensor, *, batch_size: int, dist: DistContext,
             weights: LossWeights, layer_idx: int | None = None) -> Validation:
    """Score `model` at `depth` on `sequences` [N, L] (all processes pass the same tensor).

    `layer_idx`: the newest converted layer, whose output enters the MSE term.
    """
    mine = sequences[dist.rank::dist.world_size]
    # ce, teacher_ce, kl (each weighted by sequences); the MSE's numerator and denominator over every
    # sequence, so that the relative MSE does not depend on how the sequences fall into batches and ranks
    sums = [0.0] * 5
    capture = LayerOutputCapture(model, layer_idx) if layer_idx is not None and depth > 0 else None
    try:
        for start in range(0, mine.shape[0], batch_size):
            ids = mine[start:start + batch_size].to(dist.device)
            n = ids.shape[0]
            set_depth(model, 0)
            teacher = model(input_ids=ids, use_cache=False).logits
            set_depth(model, depth)
            student = model(input_ids=ids, use_cache=False).logits
            terms = (next_token_ce(student, ids), next_token_ce(teacher, ids), kl_teacher_student(student, teacher))
            for i, value in enumerate(terms):
                sums[i] += float(value) * n
            if capture is not None:
                s, t = capture.student.double(), capture.teacher.double()
                sums[3] += float((s - t).pow(2).sum())
                sums[4] += float(t.pow(2).sum())
    finally:
        set_depth(model, depth)
        if capture is not None:
            capture.close()
    total = dist.all_reduce_sum(sums + [float(mine.shape[0])])
    count = total[-1]
    if count == 0:
        raise ValueError("no validation sequences to score")
    ce, teacher_ce, kl = (s / count for s in total[:3])
    mse = total[3] / max(total[4], 1e-12)
    objective = weights.mse * mse + weights.kl * kl + weights.ce * ce
    return Validation(ce=ce, teacher_ce=teacher_ce, kl=kl, mse=mse, objective=objective, sequences=int(count))


@torch.no_grad()
def answer_divergence(model: torch.nn.Module, depth: int, batches: list[tuple[torch.Tensor, torch.Tensor]], *,
                      dist: DistContext) -> float:
    """Mean over `batches` [(input_ids [B, T], answers [B, T] bool)] of the KL to the original model
    (depth 0) at the answer tokens (`losses.answer_kl`), for the model at `depth`: how much retrieval
    the converted layers lost. Batches without an answer are skipped; every process scores its share
    (i, i + world, ...) and all return the same mean. Raises ValueError when no batch holds an answer.
    """
    sums = [0.0, 0.0]  # sum of batch means, batches
    for ids, answers in batches[dist.rank::dist.world_size]:
        if not bool(answers[:, 1:].any()):
            continue
        ids = ids.to(dist.device)
        teacher = teacher_logits(model, ids, depth)
        sums[0] += float(answer_kl(model(input_ids=ids, use_cache=False).logits, teacher, answers))
        sums[1] += 1.0
    total, count = dist.all_reduce_sum(sums)
    if count == 0:
        raise ValueError("no episode batch holds an answer token: raise data.episodes.passkey_fraction or "
                         "recall_fraction (or data.seq_len, so that episodes fit a row)")
    return total / count
