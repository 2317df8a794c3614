"""The Ray Serve app on the reference real model: a chat completion over HTTP with the model's own chat
template, and a pool at depth 1 that loads (and verifies) the layer `dsla-serve convert` published."""

from __future__ import annotations

import httpx
import openai
import pytest
import ray
from ray import serve

from ..reference import REFERENCE
from .helpers import free_port, policy_dict, ray_env, write_policy


@pytest.fixture(scope="module")
def app(reference_artifact, tmp_path_factory):
    from dsla_serve.controller.app import application
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
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=ray_env())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(policy), name=policy.name, route_prefix="/", external_scaler_enabled=True)
        yield f"http://127.0.0.1:{port}"
    finally:
        ray.shutdown()


def test_chat_completion_with_the_real_chat_template(app):
    client = openai.OpenAI(base_url=f"{app}/v1", api_key="none", timeout=120)
    assert [m.id for m in client.models.list().data] == [REFERENCE]
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
