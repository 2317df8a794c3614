"""Greedy outputs of the engine equal Hugging Face `generate` on the same converted model."""

import pytest
import torch

from dsla_serve.replicas import Engine, SamplingParams

from .helpers import hf_greedy, random_prompts, tiny_converted

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.mark.parametrize("arch,depth", [("llama", 0), ("llama", 2), ("llama", 4), ("qwen2", 0), ("qwen2", 3),
                                        ("mistral", 1)])
def test_greedy_equals_hf_generate(arch, depth):
    model = tiny_converted(arch, seed=3)
    prompts = random_prompts(3, seed=depth, low=5, high=30)
    engine = Engine(model, depth=depth, max_model_len=64, max_num_seqs=4)
    outs = engine.generate(prompts, GREEDY, use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        assert out.finished and out.outputs[0].finish_reason == "length"
        assert out.outputs[0].token_ids == hf_greedy(model, depth, prompt, 12)


def test_chunked_prefill_equals_hf_generate():
    """Prompts read in chunks of 7 tokens (several chunks, packed with other sequences' chunks and decodes)
    give the same tokens: causal attention over the cached prefix and DSLA states carried across chunks."""
    model = tiny_converted("llama", seed=5)
    prompts = random_prompts(4, seed=11, low=20, high=45)
    engine = Engine(model, depth=2, max_model_len=80, max_num_seqs=4, prefill_chunk_tokens=7)
    outs = engine.generate(prompts, GREEDY, use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        assert out.outputs[0].token_ids == hf_greedy(model, 2, prompt, 12)


def test_text_prompts_and_tokenizer():
    engine = Engine("tiny:llama", max_model_len=64, max_num_seqs=2)
    out = engine.generate("Hello", SamplingParams(temperature=0, max_tokens=5, ignore_eos=True), use_tqdm=False)[0]
    assert out.prompt == "Hello"
    assert out.prompt_token_ids == engine.tokenizer("Hello")["input_ids"]
    assert len(out.outputs[0].token_ids) == 5
    assert out.outputs[0].text == engine.tokenizer.decode(out.outputs[0].token_ids, skip_special_tokens=True)


def test_steps_read_the_readout_mix_computed_when_the_runner_was_built(monkeypatch):
    """The runner keeps each DSLA layer's readout mix (fixed while it lives) instead of recomputing it in
    every step; the outputs are still HF's."""
    model = tiny_converted("llama", seed=4)
    engine = Engine(model, depth=3, max_model_len=64, max_num_seqs=2)
    assert set(engine.runner.readout_mix) == set(engine.runner.dsla) and len(engine.runner.dsla) == 3
    for i, twin in engine.runner.dsla.items():
        assert torch.equal(engine.runner.readout_mix[i], twin.readout_mix())

        def not_per_step():
            raise AssertionError("readout_mix() recomputed during a step")
        monkeypatch.setattr(twin, "readout_mix", not_per_step)
    prompts = random_prompts(2, seed=6, low=5, high=20)
    outs = engine.generate(prompts, GREEDY, use_tqdm=False)
    monkeypatch.undo()
    for prompt, out in zip(prompts, outs):
        assert out.outputs[0].finish_reason == "length"
        assert out.outputs[0].token_ids == hf_greedy(model, 3, prompt, 12)
