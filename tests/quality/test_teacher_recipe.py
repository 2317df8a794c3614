"""The teacher recipe on CPU: tokenizer training, token corpus, batch mixture, training smoke and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dsla_serve.model.tiny_tokenizer import build_byte_tokenizer
from dsla_serve.quality.books import read_book, save_split
from dsla_serve.quality.corpus import load_documents, open_token_corpus, save_token_corpus, slim_token_corpus
from recipes.teacher import train, train_tokenizer
from recipes.teacher.batches import BatchMixture, MixtureConfig, prefetched_batches
from recipes.teacher.train_tokenizer import train_bpe


def test_bpe_tokenizer(books_dir, split, tokenizer, tmp_path):
    from transformers import AutoTokenizer

    texts = [read_book(books_dir / n) for n in split["train"]]
    again = train_bpe(texts, vocab_size=320, progress=False)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()  # deterministic
    assert len(tokenizer) == 320
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    text = "The captain said 12345 times: hello, river!\nNew line."
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert [tokenizer.decode([i]) for i in tokenizer.encode(" 12345", add_special_tokens=False)][-5:] == list("12345")
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.encode(text, add_special_tokens=False) == ids and loaded.eos_token_id == 2


def test_token_corpus_roundtrip_and_refusals(books_dir, split, tokenizer, token_corpus_dir, tmp_path):
    corpus = open_token_corpus(token_corpus_dir, tokenizer)
    for name, ids in corpus.docs("validation"):
        assert tokenizer.decode(ids) == read_book(books_dir / name)
    stream = corpus.stream("train")
    ends = [d.start + d.length for d in corpus.documents["train"]]
    assert all(stream[e] == tokenizer.eos_token_id for e in ends) and len(stream) == ends[-1] + 1
    with pytest.raises(ValueError, match="different tokenizer"):
        open_token_corpus(token_corpus_dir, build_byte_tokenizer())
    with pytest.raises(KeyError, match="no split 'test'"):
        corpus.docs("test")
    # the three kinds of evaluation data give the same validation tokens
    save_split(split, tmp_path / "split.json")
    from_books = load_documents(books_dir, tokenizer, tmp_path / "split.json", progress=False)
    from_corpus = load_documents(token_corpus_dir, tokenizer)
    name = split["validation"][0]
    from_file = load_documents(books_dir / name, tokenizer, progress=False)
    assert [n for n, _ in from_books] == [n for n, _ in from_corpus] == split["validation"]
    assert np.array_equal(from_books[0][1], from_corpus[0][1]) and np.array_equal(from_file[0][1], from_corpus[0][1])
    with pytest.raises(FileNotFoundError, match="evaluation data not found"):
        load_documents(tmp_path / "nothing", tokenizer)


def test_slim_corpus_keeps_whole_documents(tokenizer, token_corpus_dir, tmp_path):
    corpus = open_token_corpus(token_corpus_dir, tokenizer)
    first = corpus.documents["train"][0].length
    slim = slim_token_corpus(corpus, {"train": first + 1})
    save_token_corpus(slim, tmp_path / "slim")
    reopened = open_token_corpus(tmp_path / "slim", tokenizer)
    assert [d.name for d in reopened.documents["train"]] == [corpus.documents["train"][0].name]
    assert np.array_equal(reopened.docs("train")[0][1], corpus.docs("train")[0][1])
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(reopened.docs("validation"), corpus.docs("validation")))


def test_train_tokenizer_script(books_dir, split, tmp_path):
    save_split(split, tmp_path / "split.json")
    assert train_tokenizer.main(["--books", str(books_dir), "--split", str(tmp_path / "split.json"), "--smoke",
                                 "--vocab-size", "300", "--out", str(tmp_path / "tok"),
                                 "--corpus-out", str(tmp_path / "data"), "--quiet"]) == 0
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert [d["name"] for d in meta["documents"]["validation"]] == split["validation"]
    assert meta["split"]["train"] == split["train"][:2]


def _mixture(tokenizer, token_corpus_dir, **kw):
    corpus = open_token_corpus(token_corpus_dir, tokenizer)
    cfg = MixtureConfig(seq_len=256, batch_size=8, passkey_min_len=128, recall_pairs=(2, 8), **kw)
    return BatchMixture(tokenizer, corpus.stream("train"), [d for _, d in corpus.docs("train")], cfg)


def test_batches_depend_only_on_seed_and_step(tokenizer, token_corpus_dir):
    mix = _mixture(tokenizer, token_corpus_dir, passkey_fraction=0.4, recall_fraction=0.3)
    a, kinds, answers = mix.batch(5)
    assert a.shape == answers.shape == (8, 256) and a.dtype == torch.int64 and answers.dtype == torch.bool
    assert torch.equal(a, mix.batch(5)[0]) and not torch.equal(a, mix.batch(6)[0])
    all_kinds = [k for s in range(10) for k in mix.batch(s)[1]]
    assert {"text", "passkey", "recall"} == set(all_kinds)
    for row, kind, answer in zip(a, kinds, answers):
        text = tokenizer.decode(row)
        marked = tokenizer.decode(row[answer])
        if kind == "passkey":  # the answer is the key stated earlier, right after the question
            assert "What is the pass key? The pass key is" in text
            key = marked.strip()
            assert len(key) == 5 and key.isdigit() and f"The pass key is {key}." in text
            assert text.index("What is the pass key? The pass key is" + marked) > text.index(key)
        if kind == "recall":  # every marked value is the value of a stated pair
            assert text.startswith("Remember these codes:")
            pairs, recall = text.split("Recall:")
            values = marked.split()
            assert values and all(v.isdigit() and f" {v}" in pairs for v in values)
        if kind == "text":
            assert not answer.any()


def test_prefetched_batches_are_the_batches_of_their_steps(tokenizer, token_corpus_dir):
    mix = _mixture(tokenizer, token_corpus_dir, passkey_fraction=0.4, recall_fraction=0.3)
    direct = [mix.batch(step) for step in range(3, 9)]
    for workers in (0, 2):  # built in the loop, or ahead in worker processes
        got = list(prefetched_batches(mix, 3, 9, workers))
        assert len(got) == len(direct)
        assert all(torch.equal(ids, d[0]) and torch.equal(answers, d[2]) for (ids, answers), d in zip(got, direct))
    assert list(prefetched_batches(mix, 9, 9, 2)) == []


def test_passkey_episodes_ramp_from_short_to_long(tokenizer, token_corpus_dir):
    mix = _mixture(tokenizer, token_corpus_dir, passkey_fraction=1.0, recall_fraction=0.0, passkey_ramp_steps=10)
    assert [mix.passkey_max_len(s) for s in (0, 4, 9, 10, 50)] == [140, 192, 256, 256, 256]
    for step in (0, 4):
        ids, _, answers = mix.batch(step)
        ends = [int(a.nonzero().max()) + 1 for a in answers]  # the episode ends with its answer
        assert max(ends) <= mix.passkey_max_len(step) and min(ends) >= 128
    with pytest.raises(ValueError, match="passkey_ramp_steps"):
        MixtureConfig(passkey_ramp_steps=-1)
    with pytest.raises(ValueError, match="sum to at most 1"):
        MixtureConfig(passkey_fraction=0.8, recall_fraction=0.3)


def test_copy_episodes_and_packed_rows(tokenizer, token_corpus_dir):
    mix = _mixture(tokenizer, token_corpus_dir, passkey_fraction=0.0, recall_fraction=0.0, copy_fraction=1.0,
                   copy_len=(4, 16), pack_episodes=True)
    ids, kinds, answers = mix.batch(0)
    assert set(kinds) == {"copy"}
    eos = tokenizer.eos_token_id
    for row, answer in zip(ids.tolist(), answers):
        pos, episodes = 0, 0
        while eos in row[pos:]:  # segment, the same segment, EOS; repeated until the row is full
            end = row.index(eos, pos)
            half = (end - pos) // 2
            first, second = row[pos:pos + half], row[pos + half:end]
            assert first == second and 4 <= half <= 16 and min(first) >= mix.first_plain_id  # no special ids
            assert answer[pos + half + 1:end].all() and not answer[pos:pos + half + 1].any()
            pos, episodes = end + 1, episodes + 1
        assert episodes >= 256 // 34 - 1
    one = _mixture(tokenizer, token_corpus_dir, passkey_fraction=0.0, recall_fraction=1.0, pack_episodes=False)
    packed = _mixture(tokenizer, token_corpus_dir, passkey_fraction=0.0, recall_fraction=1.0, pack_episodes=True)
    count = lambda m: sum(tokenizer.decode(r).count("Remember these codes:") for r in m.batch(3)[0])  # noqa: E731
    assert count(one) == 8 and count(packed) > 8  # one episode per row, or more where they fit
    with pytest.raises(ValueError, match="copy_len"):
        MixtureConfig(seq_len=64, copy_fraction=0.5, copy_len=(8, 40))


def test_init_from_loads_a_previous_stage(tokenizer, tmp_path):
    args = train.parse_args(["--smoke"])
    first = train.build_model(args, tokenizer)
    first.save_pretrained(tmp_path / "stage1")
    args.seed = 1
    second = train.build_model(args, tokenizer)
    assert not torch.equal(first.model.embed_tokens.weight, second.model.embed_tokens.weight)
    train.init_weights(second, tmp_path / "stage1")
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    wider = train.build_model(train.parse_args(["--smoke", "--intermediate", "256"]), tokenizer)
    with pytest.raises(SystemExit, match="another architecture"):
        train.init_weights(wider, tmp_path / "stage1")
    with pytest.raises(SystemExit, match="no model.safetensors"):
        train.init_weights(wider, tmp_path)


def _train_args(tokenizer_dir, data_dir, out, *extra):
    return ["--smoke", "--tokenizer", str(tokenizer_dir), "--data", str(data_dir), "--out", str(out),
            "--quiet", "--recall-min-pairs", "2", "--recall-max-pairs", "6", *extra]


@pytest.fixture(scope="module")
def tokenizer_dir(tokenizer, tmp_path_factory):
    d = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(d)
    return d


def test_training_smoke_loss_decreases_and_saves_a_loadable_model(tokenizer_dir, token_corpus_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "teacher"
    assert train.main(_train_args(tokenizer_dir, token_corpus_dir, out, "--steps", "12", "--lr", "3e-3")) == 0
    report = json.loads((out / "training.json").read_text())
    loss = report["log"]["loss"]
    assert len(loss) == 12 and np.mean(loss[-3:]) < loss[0] - 0.3
    assert report["log"]["val_step"] == [4, 8, 12]
    final = report["final"]
    assert final["perplexity"]["overall"]["ppl"] < 320 and {r["length"] for r in final["passkey"]["rows"]} == {128, 256}
    assert (out / "training_curve.png").stat().st_size > 0 and not (out / "checkpoint").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and model.config.num_key_value_heads == 2
    assert model.dtype == torch.bfloat16


def test_resumed_training_equals_an_uninterrupted_run(tokenizer_dir, token_corpus_dir, tmp_path):
    args = ("--steps", "6", "--save-dtype", "float32", "--final-episodes", "1", "--final-windows", "1")
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train.main(_train_args(tokenizer_dir, token_corpus_dir, whole, *args)) == 0
    assert train.main(_train_args(tokenizer_dir, token_corpus_dir, split, *args, "--stop-after", "4")) \
        == train.EXIT_INCOMPLETE
    assert (split / "checkpoint" / "state.json").is_file() and not (split / "config.json").exists()
    assert train.main(_train_args(tokenizer_dir, token_corpus_dir, split, *args)) == 0
    from safetensors.torch import load_file

    a, b = load_file(whole / "model.safetensors"), load_file(split / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = json.loads((whole / "training.json").read_text())["log"]
    lb = json.loads((split / "training.json").read_text())["log"]
    assert la == lb


def test_two_stage_script_trains_both_stages_and_plots(tokenizer_dir, token_corpus_dir, tmp_path):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from recipes.teacher.plot import joined_logs

    repo = Path(train.__file__).resolve().parents[2]
    env = {**os.environ, "TEACHER_RUN": str(tmp_path / "run"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    args = ["--smoke", "--steps", "3", "--tokenizer", str(tokenizer_dir), "--data", str(token_corpus_dir), "--quiet",
            "--recall-min-pairs", "2", "--recall-max-pairs", "4", "--final-episodes", "1", "--final-windows", "1",
            "--passkey-min-len", "128", "--copy-max-len", "64"]
    proc = subprocess.run([str(repo / "recipes" / "teacher" / "train.sh"), *args], env=env, cwd=repo,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = [tmp_path / "run" / s for s in ("stage1", "stage2", "stage3", "model")]
    for before, stage in zip(stages, stages[1:]):
        assert json.loads((stage / "training.json").read_text())["settings"]["init_from"] == str(before)
    assert json.loads((stages[2] / "training.json").read_text())["settings"]["seed"] == 1
    assert (stages[-1] / "training_stages.png").read_bytes()[:4] == b"\x89PNG"
    log = joined_logs(stages, ["a", "b", "c", "d"])
    assert log["step"] == list(range(12)) and log["starts"] == {"a": 0, "b": 3, "c": 6, "d": 9}
    assert log["val_step"] == [3, 6, 9, 12]
    # a rerun skips every complete stage; stage 1 is not needed once stage 2 is complete
    shutil.rmtree(stages[0])
    stamp = (stages[-1] / "model.safetensors").stat().st_mtime_ns
    proc = subprocess.run([str(repo / "recipes" / "teacher" / "train.sh"), *args], env=env, cwd=repo,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not stages[0].exists() and (stages[-1] / "model.safetensors").stat().st_mtime_ns == stamp
