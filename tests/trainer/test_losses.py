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


def _weights(answer_kl: float):
    from dsla_serve.trainer.config import LossWeights

    return LossWeights(mse=0.0, kl=1.0, ce=0.5, answer_kl=answer_kl)


def test_the_answer_kl_weight_changes_the_loss_only_when_the_batch_has_answers():
    from dsla_serve.trainer.losses import distillation_loss

    teacher, student = _logits(0), _logits(1)
    ids = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(2))
    answers = torch.zeros(2, 6, dtype=torch.bool)
    answers[1, 3:5] = True

    def total(w, mask):
        return distillation_loss(student, ids, _weights(w), None, teacher, mask)

    with_answers = total(1.0, answers)
    expected = total(0.0, answers).total + 1.0 * answer_kl(student, teacher, answers)
    assert torch.allclose(with_answers.total, expected) and float(with_answers.answer_kl) > 0
    assert float(total(2.0, answers).total) > float(with_answers.total) > float(total(0.0, answers).total)
    for mask in (None, torch.zeros_like(answers)):  # no episodes: the weight does nothing, and no NaN
        terms = [total(w, mask) for w in (0.0, 1.0, 5.0)]
        assert all(torch.equal(t.total, terms[0].total) for t in terms) and torch.isfinite(terms[0].total)
    assert "answer_kl" in with_answers.floats() and "answer_kl" not in total(1.0, None).floats()
