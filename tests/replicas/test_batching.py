"""Continuous batching: requests joining and leaving between steps get exactly the tokens they get alone."""

import pytest

from dsla_serve.replicas import Engine, SamplingParams

from .helpers import random_prompts, tiny_converted


def _alone(engine, prompt, params):
    return engine.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids


@pytest.mark.parametrize("depth", [0, 2])
def test_eight_requests_arriving_at_different_steps(depth):
    model = tiny_converted("llama", seed=7)
    engine = Engine(model, depth=depth, max_model_len=96, max_num_seqs=8, prefill_chunk_tokens=16)
    prompts = random_prompts(8, seed=depth, low=3, high=40)
    params = [SamplingParams(temperature=0, max_tokens=4 + 3 * i, ignore_eos=True) for i in range(8)]
    arrivals = [0, 0, 1, 3, 4, 6, 9, 13]  # the step at which each request comes in
    streams, step = {}, 0
    while len(streams) < 8 or engine.has_unfinished():
        for i, at in enumerate(arrivals):
            if at == step:
                streams[i] = engine.add_request(prompts[i], params[i])
        engine.step()
        step += 1
    together = [streams[i].result().outputs[0].token_ids for i in range(8)]
    for i in range(8):
        assert len(together[i]) == params[i].max_tokens
        assert together[i] == _alone(engine, prompts[i], params[i]), f"request {i}"


def test_more_requests_than_slots_reuse_slots():
    """Six requests through two slots: freed slots are reused with fresh (zeroed) DSLA states."""
    model = tiny_converted("qwen2", seed=2)
    engine = Engine(model, depth=3, max_model_len=64, max_num_seqs=2)
    prompts = random_prompts(6, seed=4, low=4, high=20)
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    outs = engine.generate(prompts, params, use_tqdm=False)
    assert engine.pool.num_slots == 2
    for prompt, out in zip(prompts, outs):
        assert out.outputs[0].token_ids == _alone(engine, prompt, params)


def test_long_prompt_does_not_stall_decodes():
    """While a long prompt is read in chunks, a running request still gains one token every step."""
    model = tiny_converted("llama", seed=1)
    engine = Engine(model, depth=2, max_model_len=256, max_num_seqs=4, prefill_chunk_tokens=16)
    short = engine.add_request([5, 6, 7], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    engine.step()  # prefill of the short prompt, first token
    long_prompt = random_prompts(1, seed=9, low=150, high=151)[0]
    engine.add_request(long_prompt, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
    for step in range(1, 10):  # the long prompt needs 10 steps of 16 tokens
        outputs = {o.request_id: o for o in engine.step()}
        assert len(outputs[short.request_id].outputs[0].token_ids) == 1 + step
    assert engine.scheduler.running[1].num_computed == 9 * 16  # still prefilling, chunk by chunk
