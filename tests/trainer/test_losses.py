"""dsla_serve.trainer.losses.answer_kl: the KL at the positions that predict answer tokens, and nowhere else."""

from __future__ import annotations

import torch

from dsla_serve.trainer.losses import answer_kl, kl_teacher_student


def _logits(seed: int, shape=(2, 6, 11)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_answer_kl_counts_only_the_positions_that_predict_an_answer():
    teacher, student = _logits(0), _logits(1)
    answers = torch.zeros(2, 6, dtype=torch.bool)
    answers[0, 3] = answers[1, 5] = True  # predicted by the logits at (0, 2) and (1, 4)
    got = answer_kl(student, teacher, answers)
    picked = torch.stack([student[0, 2], student[1, 4]])[None], torch.stack([teacher[0, 2], teacher[1, 4]])[None]
    assert torch.allclose(got, kl_teacher_student(*picked))

    elsewhere = student.clone()
    elsewhere[0, 3] += 5.0  # the answer's own position and all others do not count
    elsewhere[1, :4] -= 3.0
    assert torch.allclose(answer_kl(elsewhere, teacher, answers), got)
    same = student.clone()
    same[0, 2], same[1, 4] = teacher[0, 2], teacher[1, 4]
    assert float(answer_kl(same, teacher, answers)) < 1e-6 < float(got)


def test_answer_kl_is_a_zero_with_a_graph_when_the_batch_has_no_answer():
    student = _logits(1).requires_grad_()
    answers = torch.zeros(2, 6, dtype=torch.bool)
    answers[:, 0] = True  # the first token is predicted by nothing
    got = answer_kl(student, _logits(0), answers)
    assert float(got) == 0.0 and got.dtype == torch.float32
    got.backward()
    assert student.grad is not None and not student.grad.any()
