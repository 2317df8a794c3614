"""The OpenAI protocol layer without Ray: request validation and error bodies, prompt limits, and
responses checked against the `openai` client's own types."""

from __future__ import annotations

import json

import openai.types as oa
import openai.types.chat as oa_chat
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from dsla_serve.controller.frontend.errors import APIError, install_error_handlers, parse_body
from dsla_serve.controller.frontend.guard import DEFAULT_MAX_BODY_BYTES, BodyLimit
from dsla_serve.controller.frontend.formatting import (ChatStream, Choice, CompletionStream, chat_response,
                                                       completion_response)
from dsla_serve.controller.frontend.prompting import (Limits, encode_chat, encode_prompt, resolve_max_tokens,
                                                      sampling_params)
from dsla_serve.controller.frontend.protocol import ChatCompletionRequest, CompletionRequest
from dsla_serve.model.tiny_tokenizer import build_byte_tokenizer
from dsla_serve.replicas.deltas import TokenTexts
from dsla_serve.replicas.messages import StreamDelta

TOKENIZER = build_byte_tokenizer()


@pytest.fixture(scope="module")
def client():
    """A bare FastAPI app that parses bodies the way the ingress does, behind its body cap."""
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodyLimit)

    @app.post("/completions")
    async def completions(request: Request):
        return (await parse_body(request, CompletionRequest)).model_dump()

    @app.get("/broken")
    async def broken():
        raise RuntimeError("cannot open /srv/models/secret.bin on 10.1.2.3:6379 (pid 4242)")

    @app.post("/chat")
    async def chat(request: Request):
        return (await parse_body(request, ChatCompletionRequest)).model_dump()

    return TestClient(app, raise_server_exceptions=False)  # answer 500 as a server does


def _error(response, status=400):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("raw, param, words", [
    (b"{not json", None, "could not parse the JSON body"),
    (b"[1, 2]", None, "must be a JSON object"),
    (b"", None, "empty"),
    (json.dumps({"model": "m", "prompt": "x", "max_tokens": "5"}).encode(), "max_tokens", "valid integer"),
    (json.dumps({"model": "m", "prompt": "x", "max_tokens": -1}).encode(), "max_tokens", "greater than or equal"),
    (json.dumps({"model": "m", "prompt": "x", "temperature": 3}).encode(), "temperature", "less than or equal"),
    (json.dumps({"model": "m", "prompt": "x", "max_tokenz": 5}).encode(), "max_tokenz", "Unrecognized request argument"),
    (json.dumps({"model": "m"}).encode(), "prompt", "Missing required parameter"),
    (json.dumps({"model": "m", "prompt": "x", "n": 2}).encode(), "n", "only n=1"),
    (json.dumps({"model": "m", "prompt": "x", "max_tokens": 0}).encode(), "max_tokens", "only allowed with echo"),
    (json.dumps({"model": "m", "prompt": []}).encode(), "prompt", "empty list"),
    (json.dumps({"model": "m", "prompt": "x", "seed": 2**64}).encode(), "seed", "less than or equal"),
    (json.dumps({"model": "m", "prompt": "x", "top_k": 2**40}).encode(), "top_k", "less than or equal"),
    (json.dumps({"model": "m", "prompt": "x", "stop_token_ids": [2**70]}).encode(), "stop_token_ids.0",
     "less than or equal"),
])
def test_bad_completion_bodies_get_openai_errors(client, raw, param, words):
    err = _error(client.post("/completions", content=raw, headers={"content-type": "application/json"}))
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert words in err["message"]


def test_bodies_over_the_cap_are_refused_before_they_are_read(client):
    big = json.dumps({"model": "m", "prompt": "x" * DEFAULT_MAX_BODY_BYTES}).encode()
    err = _error(client.post("/completions", content=big, headers={"content-type": "application/json"}), 413)
    assert err["code"] == "request_too_large" and str(DEFAULT_MAX_BODY_BYTES) in err["message"]

    def chunked():  # no Content-Length
        for i in range(0, len(big), 1 << 16):
            yield big[i:i + (1 << 16)]

    err = _error(client.post("/completions", content=chunked(), headers={"content-type": "application/json"}), 413)
    assert err["code"] == "request_too_large"
    small = json.dumps({"model": "m", "prompt": "hi"}).encode()
    assert client.post("/completions", content=iter([small[:5], small[5:]]),
                       headers={"content-type": "application/json"}).json()["prompt"] == "hi"


def test_an_unexpected_error_shows_the_request_id_not_the_details(client):
    err = _error(client.get("/broken", headers={"X-Request-Id": "req-77"}), 500)
    assert err["code"] == "internal_error" and "req-77" in err["message"]
    assert not any(word in err["message"] for word in ("/srv", "10.1.2.3", "4242", "RuntimeError", "Traceback"))


def test_bad_chat_bodies_get_openai_errors(client):
    err = _error(client.post("/chat", json={"model": "m", "messages": []}))
    assert err["param"] == "messages"
    err = _error(client.post("/chat", json={"model": "m", "messages": [{"role": "wizard", "content": "x"}]}))
    assert err["param"].startswith("messages.0.role")
    err = _error(client.post("/chat", json={"model": "m", "messages": [{"role": "user", "content": "x"}],
                                            "top_logprobs": 2}))
    assert err["param"] == "top_logprobs"


def test_good_bodies_parse(client):
    body = client.post("/completions", json={"model": "m", "prompt": [[1, 2], [3]], "echo": True, "max_tokens": 0,
                                             "logprobs": 1}).json()
    assert body["prompt"] == [[1, 2], [3]]
    assert CompletionRequest.model_validate(body).prompts() == [[1, 2], [3]]
    chat = client.post("/chat", json={"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "max_completion_tokens": 3}).json()
    assert ChatCompletionRequest.model_validate(chat).messages[0].text() == "ab"


def test_limits_name_what_is_broken():
    limits = Limits(max_prompt_tokens=10, max_tokens_limit=20, max_model_len=25)
    assert resolve_max_tokens(5, None, limits) == 20
    assert resolve_max_tokens(8, None, limits) == 17  # the context left
    assert resolve_max_tokens(5, 7, limits) == 7
    cases = [((11, 5), "context_length_exceeded", "http.max_prompt_tokens"),
             ((5, 21), "max_tokens_too_large", "http.max_tokens_limit"),
             ((10, 20), "context_length_exceeded", "context length 25")]
    for (prompt_len, requested), code, words in cases:
        with pytest.raises(APIError) as info:
            resolve_max_tokens(prompt_len, requested, limits)
        assert info.value.status == 400 and info.value.code == code and words in info.value.message


def test_prompts_and_chat_template():
    assert encode_prompt(TOKENIZER, "hi") == [104, 105]
    assert encode_prompt(TOKENIZER, [1, 5000]) == [1, 5000]  # token ids go to the engine, which checks them
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert TOKENIZER.decode(encode_chat(TOKENIZER, request)) == "user: hi\nassistant: "
    params = sampling_params(request, 5)
    assert params.max_tokens == 5 and params.logprobs is None and params.echo is False
    bad = CompletionRequest.model_validate({"model": "m", "prompt": "x", "top_k": -1})
    bad = bad.model_copy(update={"stop_token_ids": [-3]})  # past the protocol: SamplingParams checks it too
    with pytest.raises(APIError, match="stop_token_ids"):
        sampling_params(bad, 5)


TEXTS = TokenTexts(TOKENIZER)


def _delta(ids, text, entries=None, finish=None, prompt_logprobs=None, prompt_ids=()) -> StreamDelta:
    """A delta as a replica makes it: the texts of the token ids it names come with it."""
    named = set(ids) | {t for e in entries or [] for t in e} | set(prompt_ids)
    named |= {t for e in prompt_logprobs or [] for t in e or {}}
    return StreamDelta(request_id="r", token_ids=list(ids), text=text, prompt_tokens=len(prompt_ids), depth=2,
                       finish_reason=finish, logprobs=entries, prompt_logprobs=prompt_logprobs,
                       token_texts=TEXTS.of(sorted(named)))


def _choice(prompt: str, generated: str, with_prompt_logprobs: bool) -> Choice:
    prompt_ids = encode_prompt(TOKENIZER, prompt)
    ids = encode_prompt(TOKENIZER, generated)
    entries = [{t: -0.5, 120: -1.5} for t in ids]
    choice = Choice(index=0, prompt_ids=prompt_ids)
    prompt_logprobs = [None] + [{t: -2.0} for t in prompt_ids[1:]] if with_prompt_logprobs else None
    choice.add(_delta(ids[:1], generated[:1], entries[:1], prompt_logprobs=prompt_logprobs, prompt_ids=prompt_ids))
    choice.add(_delta(ids[1:], generated[1:], entries[1:], finish="length"))
    return choice


def test_completion_response_with_echo_and_logprobs():
    choice = _choice("ab", "cd", with_prompt_logprobs=True)
    body = completion_response("cmpl-1", 0, "tiny", [choice], echo=True, logprobs=1, prompt_texts=["ab"]).model_dump()
    c = body["choices"][0]
    assert c["text"] == "abcd" and c["finish_reason"] == "length"
    lp = c["logprobs"]
    assert lp["tokens"] == ["a", "b", "c", "d"]
    # the first prompt token has no logprob: null, as OpenAI and vLLM answer (the openai types say float,
    # but its client does not validate responses)
    assert lp["token_logprobs"] == [None, -2.0, -0.5, -0.5]
    assert lp["text_offset"] == [0, 1, 2, 3]
    assert lp["top_logprobs"][0] is None and lp["top_logprobs"][2] == {"c": -0.5, "x": -1.5}
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    assert body["system_fingerprint"] == "dsla-depth-2"

    plain = completion_response("cmpl-2", 0, "tiny", [_choice("ab", "cd", False)], echo=False, logprobs=1,
                                prompt_texts=[""])
    parsed = oa.Completion.model_validate(plain.model_dump())
    assert parsed.choices[0].text == "cd" and parsed.choices[0].logprobs.token_logprobs == [-0.5, -0.5]


def test_streamed_chunks_are_openai_chunks():
    choice = Choice(index=0, prompt_ids=[97])
    stream = CompletionStream("cmpl-1", 0, "tiny", echo=True, logprobs=0)
    delta = _delta([98], "b", [{98: -0.1}], prompt_logprobs=[None], prompt_ids=[97])
    choice.add(delta)
    event = stream.chunk(choice, delta, "a")
    assert event.startswith("data: ") and event.endswith("\n\n")
    chunk = json.loads(event[len("data: "):])
    assert chunk["object"] == "text_completion" and chunk["choices"][0]["finish_reason"] is None
    assert chunk["choices"][0]["text"] == "ab" and chunk["choices"][0]["logprobs"]["text_offset"] == [0, 1]
    assert chunk["choices"][0]["logprobs"]["token_logprobs"] == [None, -0.1]

    chat = ChatStream("chatcmpl-1", 0, "tiny", logprobs=True, top_logprobs=1)
    for event in (chat.role(), chat.chunk(choice, delta), chat.usage([choice])):
        oa_chat.ChatCompletionChunk.model_validate(json.loads(event[len("data: "):]))
    final = chat_response("chatcmpl-1", 0, "tiny", _choice("hi", "yo", False), logprobs=True, top_logprobs=1)
    parsed = oa_chat.ChatCompletion.model_validate(final.model_dump())
    assert parsed.choices[0].message.content == "yo"
    assert [t.token for t in parsed.choices[0].logprobs.content] == ["y", "o"]
    assert len(parsed.choices[0].logprobs.content[0].top_logprobs) == 1
