"""Streaming deltas (`replicas/deltas.py`): what a replica streams to the ingress, without Ray."""

import asyncio

from dsla_serve.replicas import Engine, SamplingParams
from dsla_serve.replicas.deltas import stream_deltas, token_text
from dsla_serve.replicas.messages import GenerateRequest

from .helpers import tiny_converted, tokenizer


def _collect(engine, prompt, sampling, request_id, stop_after=None, prompt_text=False):
    async def run():
        deltas = []
        request = GenerateRequest(request_id, prompt, SamplingParams(**sampling), return_prompt_text=prompt_text)
        async for delta in stream_deltas(engine, request):
            deltas.append(delta)
            if stop_after is not None and len(deltas) == stop_after:
                break  # the client goes away
        return deltas

    return asyncio.run(run())


def test_deltas_add_up_to_the_engine_output_and_abort_when_the_client_leaves():
    engine = Engine(tiny_converted("llama", seed=4), tokenizer=tokenizer(), depth=2, max_model_len=64, max_num_seqs=2)
    sampling = {"temperature": 0, "max_tokens": 6, "ignore_eos": True, "logprobs": 1, "prompt_logprobs": 1}
    engine.start()
    try:
        prompt = tokenizer()("Hello")["input_ids"]
        deltas = _collect(engine, prompt, sampling, "r1", prompt_text=True)
        cut = _collect(engine, prompt, {**sampling, "max_tokens": 40}, "r2", stop_after=2)
        for _ in range(200):
            if engine.stats().running == 0:
                break
            asyncio.run(asyncio.sleep(0.01))
        stats = engine.stats()
    finally:
        engine.stop()
    reference = Engine(tiny_converted("llama", seed=4), tokenizer=tokenizer(), depth=2, max_model_len=64,
                       max_num_seqs=2).generate("Hello", SamplingParams(**sampling), use_tqdm=False)[0]
    final = reference.outputs[0]
    assert [t for d in deltas for t in d.token_ids] == final.token_ids
    assert "".join(d.text for d in deltas) == final.text
    assert [e for d in deltas for e in d.logprobs] == [dict(e) for e in final.logprobs]
    assert all(len(d.logprobs) == len(d.token_ids) for d in deltas)
    assert deltas[0].prompt_logprobs == [None if e is None else dict(e) for e in reference.prompt_logprobs]
    assert all(d.prompt_logprobs is None and d.prompt_text is None for d in deltas[1:])  # first delta only
    assert deltas[0].prompt_text == "Hello"  # asked for: the prompt ids decoded, in the replica
    # the bytes and text of every token the log-probabilities name come with them (byte tokenizer: id = byte)
    for d in deltas:
        named = set(d.token_ids) | {t for e in d.logprobs for t in e}
        assert set(d.token_texts) >= named
        for t in named:
            raw = bytes([t]) if t < 256 else tokenizer().decode([t]).encode()
            assert d.token_texts[t].raw == raw and d.token_texts[t].text == token_text(raw)
    assert set(deltas[0].token_texts) >= set(reference.prompt_token_ids)
    assert [d.finish_reason for d in deltas] == [None] * (len(deltas) - 1) + ["length"]
    assert {d.request_id for d in deltas} == {"r1"} and {d.depth for d in deltas} == {2}
    assert {d.prompt_tokens for d in deltas} == {len(reference.prompt_token_ids)}
    assert len(cut) == 2 and stats.aborted == 1  # leaving early freed the slot
