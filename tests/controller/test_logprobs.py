"""Log-probabilities as clients read them, checked against the model's own log-softmax: a replica's
deltas (engine + `stream_deltas`, no Ray) rendered by the ingress's formatting, for a byte-level
tokenizer whose tokens above 0x7f are not UTF-8 alone (distinct tokens that all decode to U+FFFD)."""

from __future__ import annotations

import asyncio

import torch

from dsla_serve.controller.frontend.formatting import Choice, chat_response, completion_response
from dsla_serve.model.loading import load_model_and_tokenizer
from dsla_serve.replicas import Engine, SamplingParams
from dsla_serve.replicas.deltas import TokenTexts, stream_deltas
from dsla_serve.replicas.messages import GenerateRequest

TOP = 5
PROMPT = "\u00e9t\u00e9 \u65e5\u672c".encode()  # ids = bytes: several of them not UTF-8 alone


def _key_to_id(key: str) -> int:
    """The byte tokenizer's id (= the byte) of a token as the response names it."""
    if key.startswith("token_id:"):
        return int(key[len("token_id:"):])
    if key.startswith("bytes:"):
        (value,) = bytes(int(h, 16) for h in key[len("bytes:"):].split("\\x")[1:])
        return value
    (value,) = key.encode("utf-8")
    return value


def _generate(sampling: SamplingParams) -> Choice:
    engine = Engine("tiny:llama", max_model_len=64, max_num_seqs=1)
    engine.start()
    try:
        async def run() -> Choice:
            choice = Choice(index=0, prompt_ids=list(PROMPT))
            request = GenerateRequest("r", list(PROMPT), sampling)
            async for delta in stream_deltas(engine, request, TokenTexts(engine.tokenizer)):
                choice.add(delta)
            return choice
        return asyncio.run(run())
    finally:
        engine.stop()


@torch.no_grad()
def _reference(ids: list[int]) -> torch.Tensor:
    """log_softmax of the same tiny model's logits at every position."""
    model, _ = load_model_and_tokenizer("tiny:llama", dtype="float32")
    return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def test_every_token_keeps_its_own_logprob_in_both_shapes():
    choice = _generate(SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=TOP, echo=True))
    reference = _reference(choice.prompt_ids + choice.token_ids)
    body = completion_response("cmpl-x", 0, "tiny-llama", [choice], echo=True, logprobs=TOP,
                               prompt_texts=[PROMPT.decode()]).model_dump()
    lp = body["choices"][0]["logprobs"]
    ids = choice.prompt_ids + choice.token_ids
    assert [_key_to_id(t) for t in lp["tokens"]] == ids

    collided = 0
    for position, (top, chosen_lp) in enumerate(zip(lp["top_logprobs"], lp["token_logprobs"])):
        if position == 0:
            assert top is None and chosen_lp is None  # the first prompt token is not predicted
            continue
        expected = reference[position - 1]
        want = set(expected.topk(TOP).indices.tolist()) | {ids[position]}
        got = {_key_to_id(k): v for k, v in top.items()}
        assert len(got) == len(top) == len(want) and set(got) == want  # nothing overwritten, nothing missing
        for token_id, value in got.items():
            assert abs(value - expected[token_id].item()) < 1e-4
        assert abs(chosen_lp - expected[ids[position]].item()) < 1e-4
        collided += sum(t >= 0x80 for t in got) >= 2  # would have shared the key "\ufffd"
    assert collided >= 3, "the test must cover positions where several byte tokens are not UTF-8 alone"
    assert lp["text_offset"][:3] == [0, 0, 1]  # "é" is two tokens: the character starts at 0, "t" at 1

    as_ids = completion_response("cmpl-x", 0, "tiny-llama", [choice], echo=True, logprobs=TOP,
                                 prompt_texts=[PROMPT.decode()], token_ids=True).model_dump()["choices"][0]["logprobs"]
    assert as_ids["tokens"] == [f"token_id:{t}" for t in ids]
    assert all(set(top) == {f"token_id:{_key_to_id(k)}" for k in mine}
               for top, mine in zip(as_ids["top_logprobs"][1:], lp["top_logprobs"][1:]))


def test_chat_logprobs_carry_each_tokens_bytes():
    choice = _generate(SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=TOP))
    reference = _reference(choice.prompt_ids + choice.token_ids)
    body = chat_response("chatcmpl-x", 0, "tiny-llama", choice, logprobs=True, top_logprobs=TOP).model_dump()
    content = body["choices"][0]["logprobs"]["content"]
    assert [c["bytes"] for c in content] == [[t] for t in choice.token_ids]
    start = len(choice.prompt_ids) - 1
    for i, entry in enumerate(content):
        expected = reference[start + i]
        want = expected.topk(TOP).indices.tolist()
        assert [t["bytes"] for t in entry["top_logprobs"]] == [[t] for t in want]  # most likely first
        assert all(abs(t["logprob"] - expected[t["bytes"][0]].item()) < 1e-4 for t in entry["top_logprobs"])
        assert len({t["token"] for t in entry["top_logprobs"]}) == TOP  # distinct names as well
