"""dsla_serve.trainer.losses.answer_kl: the KL at the positions that predict answer tokens, and nowhere else."""

from __future__ import annotations

import pytest
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


# --- the terms against their formulas, written out -------------------------------------------------------

def _log_softmax_rows(logits: torch.Tensor) -> list[list[float]]:
    """log p(v) = x_v - log sum_u exp(x_u), row by row, in plain Python floats (float64)."""
    import math

    rows = []
    for row in logits.reshape(-1, logits.shape[-1]).tolist():
        top = max(row)
        log_z = top + math.log(sum(math.exp(x - top) for x in row))
        rows.append([x - log_z for x in row])
    return rows


def test_kl_is_teacher_to_student_as_written_out():
    """KL(p_t || p_s) = mean over tokens of sum_v p_t(v) (log p_t(v) - log p_s(v)): the teacher weighs the
    terms. The reverse direction, KL(p_s || p_t), gives another number on these logits."""
    import math

    teacher, student = _logits(3, (2, 3, 5)), _logits(4, (2, 3, 5)) * 2.0
    lt, ls = _log_softmax_rows(teacher), _log_softmax_rows(student)
    forward = sum(sum(math.exp(a) * (a - b) for a, b in zip(t, s)) for t, s in zip(lt, ls)) / len(lt)
    reverse = sum(sum(math.exp(b) * (b - a) for a, b in zip(t, s)) for t, s in zip(lt, ls)) / len(lt)
    got = float(kl_teacher_student(student, teacher))
    assert got == pytest.approx(forward, rel=1e-5) and abs(forward - reverse) > 0.05


def test_relative_mse_as_written_out():
    from dsla_serve.trainer.losses import relative_mse

    s, t = _logits(5, (2, 4, 3)), _logits(6, (2, 4, 3))
    xs, ys = s.flatten().tolist(), t.flatten().tolist()
    expected = (sum((a - b) ** 2 for a, b in zip(xs, ys)) / len(xs)) / (sum(b * b for b in ys) / len(ys))
    assert float(relative_mse(s, t)) == pytest.approx(expected, rel=1e-5)


def test_next_token_ce_as_written_out():
    """CE = mean over b and i < T-1 of -log p(ids[b, i+1] | logits[b, i])."""
    from dsla_serve.trainer.losses import next_token_ce

    logits = _logits(7, (2, 4, 6))
    ids = torch.tensor([[1, 5, 0, 2], [3, 3, 4, 1]])
    lp = _log_softmax_rows(logits)  # row b * 4 + i
    terms = [-lp[b * 4 + i][int(ids[b, i + 1])] for b in range(2) for i in range(3)]
    assert float(next_token_ce(logits, ids)) == pytest.approx(sum(terms) / len(terms), rel=1e-5)


@pytest.mark.parametrize("rows", [1, 2, 7])
def test_chunked_kl_and_ce_gradients_match_autograd_of_the_plain_formula(rows):
    import torch.nn.functional as F

    from dsla_serve.trainer.chunked import chunked_ce, chunked_kl

    student = _logits(8, (9, 13)).double().requires_grad_()
    teacher = _logits(9, (9, 13)).double()
    targets = torch.randint(0, 13, (9,), generator=torch.Generator().manual_seed(1))
    plain_kl = (F.softmax(teacher, -1) * (F.log_softmax(teacher, -1) - F.log_softmax(student, -1))).sum(-1).mean()
    plain_ce = F.cross_entropy(student, targets)
    for chunked, plain in ((chunked_kl(student, teacher, rows), plain_kl), (chunked_ce(student, targets, rows), plain_ce)):
        got_grad, = torch.autograd.grad(chunked * 3.0, student)
        want_grad, = torch.autograd.grad(plain * 3.0, student, retain_graph=True)
        assert float(chunked) == pytest.approx(float(plain), rel=1e-6)
        assert torch.allclose(got_grad, want_grad, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("vocab", [49_152, 128_256])
def test_kl_at_real_vocabulary_sizes_never_makes_a_full_fp32_copy(vocab, monkeypatch):
    """At SmolLM2's and Llama 3's vocabularies, forward and backward run in chunks of at most CHUNK_BYTES
    of fp32 log-probabilities (a full copy of these 640 rows would be 126 / 328 MB); the value and the
    gradient match the plain computation."""
    import types

    import torch.nn.functional as F

    from dsla_serve.trainer import chunked

    tokens = 640
    rows = chunked.chunk_rows(vocab)
    assert rows * vocab * 4 <= chunked.CHUNK_BYTES < tokens * vocab * 4
    seen = []

    def record(fn):
        def wrapped(x, *args, **kwargs):
            seen.append(x.shape[0])
            return fn(x, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(chunked, "F", types.SimpleNamespace(log_softmax=record(F.log_softmax),
                                                            softmax=record(F.softmax)))
    g = torch.Generator().manual_seed(0)
    student = (torch.randn(2, tokens // 2, vocab, generator=g) * 2).bfloat16().requires_grad_()
    teacher = (torch.randn(2, tokens // 2, vocab, generator=g) * 2).bfloat16()
    kl = kl_teacher_student(student, teacher)
    kl.backward()
    chunks = -(-tokens // rows)
    assert max(seen) <= rows and len(seen) == 4 * chunks  # 2 log_softmax per chunk forward, 2 softmax backward
    assert student.grad.dtype == torch.bfloat16  # the gradient is written in the logits' dtype, chunk by chunk
    monkeypatch.undo()
    s = student.detach().float().reshape(tokens, vocab).requires_grad_()
    t = teacher.float().reshape(tokens, vocab)
    plain = (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1).mean()
    plain.backward()
    assert float(kl) == pytest.approx(float(plain), rel=1e-4)
    assert torch.allclose(student.grad.float().reshape(tokens, vocab), s.grad, rtol=2e-2, atol=1e-8)
