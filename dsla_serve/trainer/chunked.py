"""KL and cross-entropy over a real vocabulary, computed a chunk of rows at a time.

A batch's logits are [N, V] with V = 49 152 (SmolLM2) or 128 256 (Llama 3). The plain way,
`log_softmax(logits.float())` of the student and of the teacher, makes fp32 copies of the whole
batch's logits (4 bytes x N x V each: 0.8 GB for 4 x 1024 tokens at 49k, about 4 GB for a 7B model's
batch) and autograd keeps them for the backward pass. Here the forward pass walks `chunk_rows(V)`
rows at a time, and the backward pass recomputes each chunk's softmax and writes its gradient
straight into the gradient tensor (in the logits' own dtype): no full-vocabulary fp32 copy of the
batch ever exists, only one chunk's (`CHUNK_BYTES`).

    kl = chunked_kl(student [N, V], teacher [N, V])   # mean over rows of KL(p_teacher || p_student)
    ce = chunked_ce(logits [N, V], targets [N])       # mean over rows of -log p(target)

Gradients (per row, before the mean's 1/N): d KL / d student_logits = softmax(student) - softmax(teacher);
d CE / d logits = softmax(logits) - onehot(target). The teacher gets no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_BYTES = 64 * 2**20  # fp32 bytes of one chunk's log-probabilities


def chunk_rows(vocab: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows per chunk: as many fp32 rows of `vocab` as fit `chunk_bytes` (at least one)."""
    return max(1, chunk_bytes // (4 * vocab))


class _ChunkedKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, rows: int) -> torch.Tensor:
        total = student.new_zeros((), dtype=torch.float32)
        for i in range(0, student.shape[0], rows):
            ls = F.log_softmax(student[i:i + rows].float(), dim=-1)
            lt = F.log_softmax(teacher[i:i + rows].float(), dim=-1)
            total += (lt.exp() * (lt - ls)).sum()
        ctx.save_for_backward(student, teacher)
        ctx.rows = rows
        return total / max(student.shape[0], 1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        student, teacher = ctx.saved_tensors
        grad = torch.empty_like(student)
        scale = grad_out.float() / max(student.shape[0], 1)
        for i in range(0, student.shape[0], ctx.rows):
            ps = F.softmax(student[i:i + ctx.rows].float(), dim=-1)
            pt = F.softmax(teacher[i:i + ctx.rows].float(), dim=-1)
            grad[i:i + ctx.rows] = ((ps - pt) * scale).to(grad.dtype)
        return grad, None, None


class _ChunkedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        for i in range(0, logits.shape[0], rows):
            lp = F.log_softmax(logits[i:i + rows].float(), dim=-1)
            total -= lp.gather(-1, targets[i:i + rows, None]).sum()
        ctx.save_for_backward(logits, targets)
        ctx.rows = rows
        return total / max(logits.shape[0], 1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, targets = ctx.saved_tensors
        grad = torch.empty_like(logits)
        scale = grad_out.float() / max(logits.shape[0], 1)
        for i in range(0, logits.shape[0], ctx.rows):
            p = F.softmax(logits[i:i + ctx.rows].float(), dim=-1)
            p.scatter_add_(-1, targets[i:i + ctx.rows, None], p.new_full((p.shape[0], 1), -1.0))
            grad[i:i + ctx.rows] = (p * scale).to(grad.dtype)
        return grad, None, None


def chunked_kl(student: torch.Tensor, teacher: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """Mean over rows of KL(softmax(teacher) || softmax(student)), an fp32 scalar. student, teacher [N, V]
    (any float dtype; the teacher is treated as a constant). `rows` per chunk (default `chunk_rows(V)`)."""
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(f"student and teacher logits must both be [N, V], got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}")
    return _ChunkedKL.apply(student, teacher.detach(), rows or chunk_rows(student.shape[-1]))


def chunked_ce(logits: torch.Tensor, targets: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """Mean over rows of -log softmax(logits)[target], an fp32 scalar. logits [N, V], targets [N] int64."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [N, V] and targets [N], got {tuple(logits.shape)} and {tuple(targets.shape)}")
    return _ChunkedCE.apply(logits, targets, rows or chunk_rows(logits.shape[-1]))
