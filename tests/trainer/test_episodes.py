"""Retrieval episodes in the trainer's rows: shape, answer positions, determinism, the split they come
from, and what happens when they cannot fit a row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsla_serve.model.tiny_tokenizer import build_byte_tokenizer
from dsla_serve.quality.passkey import QUESTION
from dsla_serve.quality.recall import PREFIX, RECALL
from dsla_serve.trainer.config import EpisodeConfig
from dsla_serve.trainer.data import PackedData
from dsla_serve.trainer.episodes import TrainingEpisodes, plan_episodes, split_at_eos

SEQ = 192
TRAIN_TOKEN, VAL_TOKEN = ord("A"), ord("B")  # in no episode template: they show where a filler came from


@pytest.fixture(scope="module")
def tok():
    return build_byte_tokenizer()


def _packed(token: int, rows: int, eos: int, doc_len: int = 150, seed: int = 0) -> torch.Tensor:
    """[rows, SEQ] of documents of `token` runs (with a few lower-case letters) joined by EOS."""
    rng = np.random.default_rng(seed)
    stream = []
    while len(stream) < rows * SEQ:
        doc = np.where(rng.random(doc_len) < 0.8, token, rng.integers(ord("a"), ord("z"), doc_len))
        stream += doc.tolist() + [eos]
    return torch.tensor(stream[:rows * SEQ], dtype=torch.int64).reshape(rows, SEQ)


@pytest.fixture(scope="module")
def data(tok):
    eos = tok.eos_token_id
    return PackedData(train=_packed(TRAIN_TOKEN, 24, eos), val=_packed(VAL_TOKEN, 6, eos, seed=1))


def _episodes(tok, data, **cfg) -> TrainingEpisodes:
    return TrainingEpisodes.build(EpisodeConfig(**cfg), tok, data, SEQ, seed=3, held_out_rows=10, batch_size=4)


def _episode_end(row: torch.Tensor, eos: int) -> int:
    return int((row == eos).nonzero()[0])


def test_split_at_eos_gives_the_documents_of_a_packed_split():
    packed = torch.tensor([[5, 6, 0, 7], [0, 0, 8, 9]])
    assert [d.tolist() for d in split_at_eos(packed, 0)] == [[5, 6], [7], [8, 9]]


def test_mixed_rows_have_the_shape_and_answers_only_at_answer_tokens(tok, data):
    eps = _episodes(tok, data, passkey_fraction=0.4, recall_fraction=0.4, recall_pairs=(2, 6))
    rows = data.train[:16]
    ids, answers = eps.mix(rows, range(100, 116), seed=7)
    assert ids.shape == answers.shape == rows.shape and ids.dtype == torch.int64 and answers.dtype == torch.bool
    kinds = set()
    for row, text, mask in zip(ids, rows, answers):
        if torch.equal(row, text):  # a text row: nothing marked
            assert not mask.any()
            kinds.add("text")
            continue
        end = _episode_end(row, tok.eos_token_id)
        assert mask.any() and not mask[end:].any()  # answers inside the episode only
        assert torch.equal(row[end + 1:], text[:SEQ - end - 1])  # then the head of the replaced text row
        episode, marked = tok.decode(row[:end]), tok.decode(row[mask])
        if episode.startswith(PREFIX):  # recall: every marked value follows its key in the pairs
            kinds.add("recall")
            pairs = episode.split(RECALL)[0]
            assert all(v.isdigit() and f" {v}" in pairs for v in marked.split())
        else:  # passkey: the key stated earlier, marked right after the question, closing the episode
            kinds.add("passkey")
            key = marked.strip()
            assert len(key) == 5 and key.isdigit() and episode.endswith(QUESTION + marked)
            assert f"The pass key is {key}." in episode
            assert mask[:end].nonzero().flatten().tolist() == list(range(end - len(marked), end))
    assert kinds == {"text", "recall", "passkey"}


def test_rows_are_deterministic_per_seed_and_position_not_per_batching(tok, data):
    eps = _episodes(tok, data)
    rows, positions = data.train[:8], range(40, 48)
    ids, answers = eps.mix(rows, positions, seed=1)
    again = _episodes(tok, data).mix(rows, positions, seed=1)
    assert torch.equal(ids, again[0]) and torch.equal(answers, again[1])
    halves = [eps.mix(rows[s:s + 4], positions[s:s + 4], seed=1) for s in (0, 4)]  # e.g. two processes
    assert torch.equal(ids, torch.cat([h[0] for h in halves])) and torch.equal(answers, torch.cat([h[1] for h in halves]))
    assert not torch.equal(ids, eps.mix(rows, positions, seed=2)[0])
    held = _episodes(tok, data).held_out
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(held, eps.held_out))


def test_held_out_episodes_use_validation_documents_and_training_episodes_training_ones(tok, data):
    eps = _episodes(tok, data, passkey_fraction=0.5, recall_fraction=0.5, recall_pairs=(2, 4))
    assert [ids.shape[0] for ids, _ in eps.held_out] == [4, 4, 2]  # held_out_rows=10 in batches of 4
    for ids, answers in eps.held_out:
        assert ids.shape == answers.shape == (ids.shape[0], SEQ)
        assert (answers.sum(1) > 0).all()  # every held-out row is an episode
        assert not (ids == TRAIN_TOKEN).any() and (ids == VAL_TOKEN).any()
    ids, answers = eps.mix(data.train[:16], range(16), seed=0)
    assert answers.any() and not (ids == VAL_TOKEN).any()


def test_episodes_that_cannot_fit_the_row_are_left_out_and_said_so(tok, data):
    cfg = EpisodeConfig()
    plan = plan_episodes(cfg, tok, 64, longest_document=1000)  # a byte-level passkey needs 103 tokens
    assert plan.passkey_fraction == 0.0 and plan.recall_fraction == 0.1 and plan.passkey_len is None
    assert any("passkey left out" in n and "data.seq_len=64" in n for n in plan.notes)
    assert plan.recall_pairs[1] < 64 and any("narrowed" in n for n in plan.notes)
    off = plan_episodes(cfg, tok, 32, longest_document=1000)
    assert not off.active and len(off.notes) == 2
    plan = plan_episodes(cfg, tok, 4096, longest_document=1000)  # filler from one document
    assert plan.passkey_len == (256, 103 + 1000) and plan.recall_pairs == (4, 64) and not plan.notes

    eps = _episodes(tok, data, passkey_fraction=0.5, recall_fraction=0.5)
    ids, answers = eps.mix(data.train[:16], range(16), seed=0)
    for row, mask in zip(ids, answers):  # every episode whole: its answers end before its EOS
        if mask.any():
            assert int(mask.nonzero().max()) < _episode_end(row, tok.eos_token_id)
    assert not _episodes(tok, data, passkey_fraction=0.0, recall_fraction=0.0).active


# --- in the trainer ------------------------------------------------------------------------------

def _run(corpus, out, *, episodes: dict, answer_kl: float, depth: int = 1, order: str = "forward"):
    from dsla_serve.trainer import Trainer

    from .helpers import tiny_config, tiny_model

    cfg = tiny_config(corpus, out, depth=depth, order={"method": order},
                      data={"seq_len": 160, "max_val_tokens": 160 * 4, "episodes": episodes},
                      training={"steps": 3, "loss": {"mse": 1.0, "kl": 1.0, "ce": 0.0, "answer_kl": answer_kl}})
    model, tokenizer = tiny_model()
    losses = []
    summary = Trainer(cfg, model=model, tokenizer=tokenizer).run(on_step=lambda layer, step, loss: losses.append(loss))
    return cfg, summary, losses


OFF = {"passkey_fraction": 0.0, "recall_fraction": 0.0}
ON = {"passkey_fraction": 0.5, "recall_fraction": 0.5}


def test_the_answer_kl_weight_changes_training_only_with_episodes(corpus, tmp_path):
    _, off_0, loss_off_0 = _run(corpus, tmp_path / "off0", episodes=OFF, answer_kl=0.0)
    _, off_1, loss_off_1 = _run(corpus, tmp_path / "off1", episodes=OFF, answer_kl=1.0)
    assert loss_off_0 == loss_off_1 and all(np.isfinite(loss_off_1))  # no answer tokens: term 0, not NaN
    assert "val_answer_kl" not in off_1.layers[0].metrics
    _, on_0, loss_on_0 = _run(corpus, tmp_path / "on0", episodes=ON, answer_kl=0.0)
    _, on_1, loss_on_1 = _run(corpus, tmp_path / "on1", episodes=ON, answer_kl=1.0)
    assert loss_on_0 != loss_off_0  # the rows themselves changed
    assert loss_on_1[0] > loss_on_0[0] and loss_on_1 != loss_on_0  # the answer term adds a KL, and a gradient
    assert on_1.layers[0].metrics["val_answer_kl"] > 0
    from dsla_serve.model import Artifact

    info = Artifact.open(on_1.artifact).metadata["data"]["episodes"]
    assert info["passkey_fraction"] == 0.5 and info["held_out_rows"] == 32


def test_an_artifact_from_before_episodes_resumes_with_episodes_off_only(corpus, tmp_path):
    import json

    from dsla_serve.trainer import ResumeError

    out = tmp_path / "old"
    _run(corpus, out, episodes=OFF, answer_kl=0.0)
    manifest = json.loads((out / "manifest.json").read_text())  # as written before these fields existed
    del manifest["metadata"]["recipe"]["data"]["episodes"], manifest["metadata"]["recipe"]["training"]["loss"]["answer_kl"]
    del manifest["metadata"]["recipe"]["order"]["episode_sequences"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ResumeError, match=r"data\.episodes\.passkey_fraction \(artifact 0\.0, config 0\.5\).*"
                                          r"training\.loss\.answer_kl \(artifact 0\.0, config 1\.0\)"):
        _run(corpus, out, episodes=ON, answer_kl=1.0, depth=2)
    _, summary, _ = _run(corpus, out, episodes=OFF, answer_kl=1.0, depth=2)  # without episodes answer_kl is inert
    assert summary.resumed_from == 1 and summary.published_depth == 2
