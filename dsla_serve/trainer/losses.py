"""The distillation objective of one new DSLA layer.

    loss = w_mse * relMSE(y_dsla, y_attn) + w_kl * KL(p_teacher || p_student) + w_ce * CE(next token)
           + w_answer_kl * KL(p_teacher || p_student at answer tokens only)

The answer term needs a batch that marks its answer tokens (`answers` [B, T] bool): the trainer's
retrieval episodes (`dsla_serve.trainer.episodes`) do, book text has none, and a batch without an
answer contributes 0 to it (never NaN).

- y_dsla [B, T, hidden]: the new layer's attention output in the student forward;
  y_attn: the *original* softmax attention of that layer on the *same* input (the student's hidden
  state at that layer), run beside it under no_grad. This compares the layer's own output; the
  published code compared layer inputs, off by one layer. relMSE divides by the target's mean
  square, so the weight means the same for every model size and layer.
- p_teacher: the original model (depth 0 of the same model object); p_student: the model at the
  current depth (earlier layers converted and frozen, the new one training).
- CE: next-token cross-entropy of the student on the input itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..model import decoder_layers, set_depth
from .chunked import chunked_ce, chunked_kl

if TYPE_CHECKING:  # pydantic-free at run time: the GPU image imports these modules without it
    from .config import LossWeights


class LayerOutputCapture:
    """Forward hook on the DSLA twin of `layer_idx`: its output and the original attention's output
    on the same input, for the MSE term.

    `student` [B, T, hidden] keeps its graph; `teacher` [B, T, hidden] is computed under no_grad.
    Only the latest forward is kept. Use as a context manager (the hook is removed on exit).
    """

    def __init__(self, model: torch.nn.Module, layer_idx: int):
        self._attn = decoder_layers(model)[layer_idx].self_attn
        twin = getattr(self._attn, "dsla", None)
        if twin is None:
            raise ValueError(f"layer {layer_idx} is not converted to DSLA; nothing to capture")
        self.student: torch.Tensor | None = None
        self.teacher: torch.Tensor | None = None
        self._handle = twin.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        self.student = output[0]
        original_forward = type(self._attn).forward  # the softmax attention code, bypassing the routing
        with torch.no_grad():
            self.teacher = original_forward(self._attn, *args, **kwargs)[0]

    def clear(self) -> None:
        self.student = self.teacher = None

    def close(self) -> None:
        self._handle.remove()
        self.clear()

    def __enter__(self) -> "LayerOutputCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class LossTerms:
    """Per-token means of each term (fp32 scalars); `total` is the weighted sum, with graph.
    `answer_kl` is the mean over answer positions (0 without answers)."""

    total: torch.Tensor
    mse: torch.Tensor
    kl: torch.Tensor
    ce: torch.Tensor
    answer_kl: torch.Tensor | None = None

    def floats(self) -> dict[str, float]:
        names = ("total", "mse", "kl", "ce") + (("answer_kl",) if self.answer_kl is not None else ())
        return {k: float(getattr(self, k).detach()) for k in names}


def relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean((s - t)^2) / mean(t^2), in fp32. s, t: [B, T, hidden]."""
    s, t = student.float(), teacher.float()
    return (s - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-12)


def kl_teacher_student(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_student) = sum_v p_t(v) (log p_t(v) - log p_s(v)), summed over the vocabulary and
    averaged over tokens, in fp32. Logits [..., V]; computed in row chunks (`chunked.chunked_kl`): no
    full-vocabulary fp32 copy of the batch's logits is made."""
    return chunked_kl(student_logits.flatten(0, -2), teacher_logits.flatten(0, -2))


def answer_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_student) averaged over the positions that predict an answer token only.

    student_logits, teacher_logits [B, T, V]; answers [B, T] bool, True at answer tokens (e.g. the
    passkey digits of an episode), so the logits at t count where answers[:, t + 1] is True. Answers are
    a fraction of a percent of a batch's tokens: in the all-token KL they hardly move the gradient, as a
    mean of their own they do. Returns an fp32 zero (with graph) when the batch holds no answer.
    """
    predicts = answers[:, 1:].to(student_logits.device)
    if not bool(predicts.any()):
        return student_logits.sum().float() * 0.0
    return chunked_kl(student_logits[:, :-1][predicts], teacher_logits[:, :-1][predicts])


def next_token_ce(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting input_ids[:, 1:] from logits[:, :-1]. logits [B, T, V]; in row
    chunks (`chunked.chunked_ce`)."""
    return chunked_ce(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten().to(logits.device))


def teacher_logits(model: torch.nn.Module, input_ids: torch.Tensor, depth: int) -> torch.Tensor:
    """Logits [B, T, V] of the original model (depth 0), leaving the model at `depth` afterwards."""
    set_depth(model, 0)
    try:
        with torch.no_grad():
            return model(input_ids=input_ids, use_cache=False).logits
    finally:
        set_depth(model, depth)


def distillation_loss(student_logits: torch.Tensor, input_ids: torch.Tensor, weights: LossWeights,
                      capture: LayerOutputCapture | None, teacher: torch.Tensor | None,
                      answers: torch.Tensor | None = None) -> LossTerms:
    """Combine the terms with `weights` (mse, kl, ce; answer_kl when `answers` [B, T] bool is given).
    A term with weight 0 may lack its input (capture / teacher logits None) and then counts as 0;
    without `answers` (or with none True) the answer term is 0."""
    zero = student_logits.new_zeros((), dtype=torch.float32)
    mse = relative_mse(capture.student, capture.teacher) if capture is not None and capture.student is not None \
        else zero
    kl = kl_teacher_student(student_logits, teacher) if teacher is not None else zero
    if weights.ce > 0:
        ce = next_token_ce(student_logits, input_ids)
    else:  # a metric only: no graph, so nothing of it is kept for the backward pass
        with torch.no_grad():
            ce = next_token_ce(student_logits.detach(), input_ids)
    if weights.mse > 0 and (capture is None or capture.student is None):
        raise RuntimeError("the MSE term needs the layer output, but the capture hook saw no forward")
    if weights.kl > 0 and teacher is None:
        raise RuntimeError("the KL term needs teacher logits")
    total = weights.mse * mse + weights.kl * kl + weights.ce * ce
    if answers is None:
        return LossTerms(total=total, mse=mse, kl=kl, ce=ce)
    w_answer = weights.answer_kl
    if w_answer > 0 and teacher is None:
        raise RuntimeError("the answer_kl term needs teacher logits")
    answer = answer_kl(student_logits, teacher, answers) if teacher is not None else zero
    return LossTerms(total=total + w_answer * answer if w_answer > 0 else total, mse=mse, kl=kl, ce=ce,
                     answer_kl=answer)
