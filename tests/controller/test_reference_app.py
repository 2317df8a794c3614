"""The Ray Serve app on the reference real model: a chat completion over HTTP with the model's own chat
template, and a pool at depth 1 that loads (and verifies) the layer `dsla-serve convert` published."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.ports import free_port

from ..reference import REFERENCE
from .helpers import local_app, policy_dict, write_policy


@pytest.fixture(scope="module")
def app(reference_artifact, tmp_path_factory):
    from dsla_serve.policies import load_policy

    artifact, _ = reference_artifact
    port = free_port()
    policy = policy_dict(
        port, name="reference",
        model={"path": REFERENCE, "dtype": "float32", "max_model_len": 512},
        artifact=str(artifact),
        pools=[{"name": "accurate", "depth": 0, "resources": {"num_cpus": 0.25}, "max_concurrent_requests": 2},
               {"name": "fast", "depth": 1, "resources": {"num_cpus": 0.25}, "max_concurrent_requests": 2}],
        quality={"max_ppl_ratio": 1.5, "max_depth": 1},
    )
    policy = load_policy(write_policy(tmp_path_factory.mktemp("reference-app") / "policy.yaml", policy))
    with local_app(policy, port) as url:
        yield url


def test_chat_completion_with_the_real_chat_template(app):
    client = openai.OpenAI(base_url=f"{app}/v1", api_key="none", timeout=120)
    assert [m.id for m in client.models.list().data] == [REFERENCE, f"{REFERENCE}@d0", f"{REFERENCE}@d1"]
    reply = client.chat.completions.create(
        model=REFERENCE, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=24,
        temperature=0)
    choice = reply.choices[0]
    assert choice.message.content.strip() == "The capital of France is Paris."
    assert choice.finish_reason == "stop"  # <|im_end|>, the tokenizer's EOS, ended the turn
    assert reply.system_fingerprint == "dsla-depth-0"
    # the prompt was rendered with the ChatML template: a default system turn, the user turn, the assistant's
    assert reply.usage.prompt_tokens == 37


def test_the_deeper_pool_loaded_the_converted_layer(app):
    status = httpx.get(f"{app}/v1/dsla/status", timeout=30).json()
    pools = {p["name"]: p for p in status["pools"]}
    assert pools["fast"]["loaded_depth"] == 1 and pools["fast"]["serving_depths"] == [1]
    assert status["quality"]["available_depth"] == 1 and status["quality"]["floor"] == 1


def test_a_depth_is_evaluated_through_the_endpoint(app):
    """What an evaluation harness does, by hand: the model at each served depth, scored by echo
    (log-likelihood) and greedy generation, each answer naming its depth; the real tokenizer through
    vLLM's tokenizer endpoints."""
    with httpx.Client(base_url=app, timeout=120) as http:
        cards = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
        assert set(cards) == {REFERENCE, f"{REFERENCE}@d0", f"{REFERENCE}@d1"}
        assert cards[f"{REFERENCE}@d1"]["max_model_len"] == 96  # prompts <= 64 + completions <= 32 (the policy's)
        context, continuation = "The capital of France is", " Paris"
        ids = http.post("/tokenize", json={"prompt": context + continuation, "add_special_tokens": False}).json()
        n_context = http.post("/tokenize", json={"prompt": context, "add_special_tokens": False}).json()["count"]
        scores = {}
        for depth in (0, 1):
            r = http.post("/v1/completions", json={"model": f"{REFERENCE}@d{depth}", "prompt": ids["tokens"],
                                                   "max_tokens": 0, "echo": True, "logprobs": 1})
            body = r.json()
            assert r.status_code == 200 and body["system_fingerprint"] == f"dsla-depth-{depth}", r.text
            scores[depth] = sum(body["choices"][0]["logprobs"]["token_logprobs"][n_context:])
            gen = http.post("/v1/completions", json={"model": f"{REFERENCE}@d{depth}", "prompt": context,
                                                     "max_tokens": 4, "temperature": 0, "stop": ["\n", ".", "!", "?",
                                                                                                 "<|im_end|>"]})
            assert gen.json()["system_fingerprint"] == f"dsla-depth-{depth}" and gen.json()["model"].endswith(f"@d{depth}")
        assert -3.0 < scores[0] < 0 and scores[1] != scores[0]  # the original model knows; one layer changes it
        assert http.post("/detokenize", json={"tokens": ids["tokens"]}).json()["prompt"] == context + continuation
        chat = http.post("/tokenize", json={"messages": [{"role": "user", "content": "What is the capital of France?"}]})
        assert chat.json()["count"] == 37  # the ChatML rendering the chat endpoint serves
        info = http.get("/tokenizer_info").json()
        assert info["eos_token"] == "<|im_end|>" and "<|im_start|>" in info["chat_template"]
