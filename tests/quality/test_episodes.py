"""Passkey and associative-recall episodes: layout, positions, determinism; and the greedy span check."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from dsla_serve.model.tiny_tokenizer import build_byte_tokenizer
from dsla_serve.quality.passkey import QUESTION, STATEMENT, PasskeyBuilder, passkey_episodes
from dsla_serve.quality.recall import RECALL, recall_episodes
from dsla_serve.quality.scoring import spans_correct


@pytest.fixture(scope="module")
def tok():
    return build_byte_tokenizer()


def _docs():
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, size=n) for n in (300, 900, 1500)]


def _contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
    return any(np.array_equal(haystack[i:i + len(needle)], needle) for i in range(len(haystack) - len(needle) + 1))


@pytest.mark.parametrize("length", [200, 512, 1024])
def test_passkey_episode_layout(tok, length):
    eps = passkey_episodes(tok, _docs(), length, count=6, seed=3)
    for e in eps:
        ids = e.input_ids
        assert len(ids) == length and e.answer_start + e.answer_length == length
        assert tok.decode(e.answer_ids) == " " + e.passkey and len(e.passkey) == 5
        statement = STATEMENT.format(key=e.passkey)
        assert tok.decode(ids[e.statement_start:e.statement_start + len(statement)]) == statement
        question = ids[e.answer_start - len(QUESTION):e.answer_start]
        assert tok.decode(question) == QUESTION
        n_fill = length - len(statement) - len(QUESTION) - e.answer_length
        assert 0 <= e.statement_start <= 0.5 * n_fill  # stated early: in the first half of the filler
        after = ids[e.statement_start + len(statement):e.answer_start - len(QUESTION)]
        filler = np.concatenate([ids[:e.statement_start], after])
        assert len(filler) == n_fill and any(_contains(d, filler) for d in _docs())
    assert len({e.passkey for e in eps}) > 1


def test_passkey_episodes_are_deterministic(tok):
    a = passkey_episodes(tok, _docs(), 512, count=4, seed=3)
    b = passkey_episodes(tok, _docs(), 512, count=4, seed=3)
    c = passkey_episodes(tok, _docs(), 512, count=4, seed=4)
    assert all(np.array_equal(x.input_ids, y.input_ids) for x, y in zip(a, b))
    assert not all(np.array_equal(x.input_ids, y.input_ids) for x, y in zip(a, c))


def test_passkey_refuses_impossible_lengths(tok):
    builder = PasskeyBuilder(tok, _docs())
    with pytest.raises(ValueError, match=f"at least {builder.min_length()} tokens"):
        builder.build(50, np.random.default_rng(0))
    with pytest.raises(ValueError, match="no filler document"):
        builder.build(5000, np.random.default_rng(0))


@pytest.mark.parametrize("pairs", [1, 8, 40])
def test_recall_episode_layout(tok, pairs):
    for e in recall_episodes(tok, pairs, count=3, seed=0):
        assert len(e.answer_spans) == len(e.keys) == pairs == len(set(e.keys))
        text = tok.decode(e.input_ids)
        context, queries = text.split(RECALL)
        for key, value, (start, length) in zip(e.keys, e.values, e.answer_spans):
            assert tok.decode(e.input_ids[start:start + length]) == " " + value
            assert f" {key} {value}" in context  # the pair was stated before
            assert tok.decode(e.input_ids[start - len(key) - 1:start]) == " " + key  # right after its key
        assert e.answer_spans[-1][0] + e.answer_spans[-1][1] == len(e.input_ids)


class SuccessorModel(nn.Module):
    """Predicts token + 1 after every token: a model whose greedy answers are known exactly."""

    def __init__(self, vocab=64):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, use_cache=False, logits_to_keep=0):
        logits = nn.functional.one_hot((input_ids + 1) % self.vocab, self.vocab).float()
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def test_spans_correct_checks_each_span_at_the_right_offset():
    seqs = [np.array([5, 6, 7, 8, 20, 21, 22]), np.array([1, 2, 9, 10])]
    spans = [[(1, 3), (5, 2), (4, 1), (3, 2)], [(1, 1), (2, 1), (3, 1)]]
    got = spans_correct(SuccessorModel(), seqs, spans, pad_id=0, batch_size=2)
    assert got == [[True, True, False, False], [True, False, True]]
    with pytest.raises(ValueError, match="outside"):
        spans_correct(SuccessorModel(), seqs, [[(6, 2)], [(1, 1)]], pad_id=0)


# --- rows of episodes + text (dsla_serve.quality.episodes) --------------------------------------

def test_episode_row_is_episode_eos_text_with_answers_at_the_answer_tokens_only(tok):
    from dsla_serve.quality.episodes import episode_row, passkey_maker, recall_maker

    eos = tok.eos_token_id
    text = np.full(400, ord("x"), dtype=np.int64)
    make = passkey_maker(PasskeyBuilder(tok, _docs()), min_len=150, max_len=200)
    ids, answers = episode_row(make, lambda n, _: text[:n], 256, eos, np.random.default_rng(3))
    assert ids.shape == answers.shape == (256,) and ids.dtype == np.int64 and answers.dtype == bool
    end = int(np.flatnonzero(ids == eos)[0])  # the episode ends just before its EOS, then text
    assert 150 <= end <= 200 and (ids[end + 1:] == ord("x")).all()
    marked = np.flatnonzero(answers)
    assert marked.tolist() == list(range(end - len(marked), end))  # the answer closes the episode
    key = tok.decode(ids[answers]).strip()
    assert len(key) == 5 and key.isdigit() and tok.decode(ids[:end]).endswith(QUESTION + " " + key)

    make = recall_maker(tok, (3, 3))
    ids, answers = episode_row(make, lambda n, _: text[:n], 256, eos, np.random.default_rng(4))
    values = tok.decode(ids[answers]).split()
    prompt = tok.decode(ids[:int(np.flatnonzero(ids == eos)[0])])
    assert len(values) == 3 and all(v.isdigit() and len(v) == 3 for v in values)
    assert all(prompt.split(RECALL)[0].count(f" {v}") >= 1 for v in values)


def test_recall_maker_draws_fewer_pairs_where_an_episode_would_not_fit(tok):
    from dsla_serve.quality.episodes import recall_length, recall_maker

    make = recall_maker(tok, (30, 30), max_len=120)
    for seed in range(5):
        ids, spans = make(np.random.default_rng(seed))
        assert len(ids) <= 120 and 1 <= len(spans) < 30
    assert recall_length(tok, 1) < recall_length(tok, 5) < recall_length(tok, 30)
