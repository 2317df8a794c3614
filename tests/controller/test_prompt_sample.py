"""The opt-in served-prompt sample: a bounded seeded reservoir in the ingress, a jsonl file for the trainer,
and the trainer using it for later layers only (published layers and the resume check untouched)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
import torch

from dsla_serve.controller.frontend.ingress_state import IngressState
from dsla_serve.controller.frontend.prompt_sample import PromptReservoir, chat_prompt_text, write_prompts_jsonl
from dsla_serve.controller.frontend.protocol import ChatCompletionRequest
from dsla_serve.controller.messages import PromptSampleStatus
from dsla_serve.model import Artifact
from dsla_serve.model.manifest import served_prompts_path
from dsla_serve.policies import load_policy
from dsla_serve.trainer.data import read_present_documents
from dsla_serve.trainer.trainer import Trainer
from tests.trainer.helpers import layer_hashes, tiny_config, tiny_model, write_corpus

from .helpers import policy_dict, write_policy


def test_reservoir_is_bounded_and_deterministic():
    a, b = PromptReservoir(5, seed=3), PromptReservoir(5, seed=3)
    for i in range(1000):
        a.offer(f"p{i}")
        b.offer(f"p{i}")
    assert len(a) == 5 and a.seen == 1000 and a.texts() == b.texts()
    assert not a.offer("   ") and a.seen == 1000  # empty prompts are not counted


def test_reservoir_is_uniform_over_the_stream():
    counts: Counter = Counter()
    for seed in range(400):
        r = PromptReservoir(10, seed=seed)
        for i in range(100):
            r.offer(str(i))
        counts.update(int(t) // 25 for t in r.texts())  # 4 quarters of the stream
    # each quarter holds 1/4 of the 4000 kept prompts (1000 expected, sd ~27); a first-n or last-n bias fails
    assert all(880 < counts[q] < 1120 for q in range(4)), counts


def test_jsonl_is_written_atomically_and_read_by_the_trainer(tmp_path):
    path = write_prompts_jsonl(tmp_path / "a" / "served-prompts.jsonl", ["hello \"world\"", "zweite Zeile\nmit Umbruch"])
    assert [json.loads(line)["text"] for line in path.read_text().splitlines()] == \
        ["hello \"world\"", "zweite Zeile\nmit Umbruch"]
    assert path.stat().st_mode & 0o077 == 0  # owner only: the file holds users' prompts
    assert [p.name for p in path.parent.iterdir()] == ["served-prompts.jsonl"]  # no temporary left behind
    assert [d.text for d in read_present_documents([path, tmp_path / "missing.jsonl"])] == \
        ["hello \"world\"", "zweite Zeile\nmit Umbruch"]


def test_chat_sample_keeps_only_prompt_roles():
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "SECRET COMPLETION"}, {"role": "user", "content": "and then?"}]})
    assert chat_prompt_text(request) == "be brief\n\nhi\n\nand then?"


def _policy(tmp_path, **trainer):
    data = policy_dict(8000)
    data["trainer"] = {"data": [str(write_corpus(tmp_path / "corpus", documents=4))], "depth": 1, **trainer}
    data.pop("artifact", None)
    data["trainer"]["output_dir"] = str(tmp_path / "artifact")
    return load_policy(write_policy(tmp_path / "p.yaml", data))


@pytest.mark.parametrize("opted_in", [False, True])
def test_ingress_collects_only_when_opted_in(tmp_path, opted_in):
    policy = _policy(tmp_path, serve_prompts_sample=opted_in, serve_prompts_max=3)
    core = IngressState(policy, policy_actor=None, pools={})
    core.served_prompts([f"prompt {i}" for i in range(10)])
    asyncio.run(core.write_prompt_sample())
    path = served_prompts_path(policy.artifact_dir)
    if not opted_in:
        assert core.prompt_sample is None and not path.exists()
        return
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(x)["text"].startswith("prompt ") for x in lines)
    assert core.prompt_sample.status() == PromptSampleStatus(kept=3, capacity=3, seen=10, file=str(path))


def test_served_prompts_reach_only_layers_trained_after_them(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", documents=8, words=120)
    plain_dir, served_dir = tmp_path / "plain", tmp_path / "served"
    sample = served_prompts_path(served_dir)
    configs = {d: tiny_config(corpus, d, depth=1, data={"train_only_paths": [str(served_prompts_path(d))]})
               for d in (plain_dir, served_dir)}
    for cfg in configs.values():  # layer 1: no sample exists yet in either
        model, tok = tiny_model()
        Trainer(cfg, model=model, tokenizer=tok).run()
    assert layer_hashes(plain_dir) == layer_hashes(served_dir)

    write_prompts_jsonl(sample, ["the cat sat on the lamp " * 8, "seven green doors " * 12])
    baseline = {}
    for out, cfg in configs.items():  # resume to depth 2: the recipe check must accept the new data
        model, tok = tiny_model()
        trainer = Trainer(cfg.with_overrides(depth=2), model=model, tokenizer=tok)
        summary = trainer.run()
        assert summary.resumed_from == 1 and summary.published_depth == 2
        baseline[out] = trainer.data
    plain, served = baseline[plain_dir], baseline[served_dir]
    assert served.train.shape[0] > plain.train.shape[0] and torch.equal(served.val, plain.val)
    assert [e.metrics["train_only_sequences"] for e in Artifact.open(served_dir).entries] == \
        [0, served.train.shape[0] - plain.train.shape[0]]
    first = sorted(layer_hashes(plain_dir).items())[0]
    assert first in layer_hashes(served_dir).items()  # the published layer is untouched

