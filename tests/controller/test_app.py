"""The whole app on a local Ray (CPU, tiny model), one instance shared by every test of this module.

Two pools of `tiny:llama`, one replica each: `accurate` at depth 0 and `fast` at depth 1, from an
artifact with one published layer; a background trainer appends the second layer while the other
tests run. Requests carry an API key. Tests run in file order: the controller test first (it needs
the resting state), the trainer test last (it gives the trainer the most time).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
import time

import httpx
import openai
import pytest
import ray
from ray import serve

from dsla_serve.controller.app import application
from dsla_serve.policies import load_policy
from tests.polling import wait_for

from .helpers import free_port, make_artifact, policy_dict, ray_env, write_policy

KEY_ENV, KEY = "DSLA_TEST_API_KEY", "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "tiny-llama"
START: dict = {}  # the status right after the app came up
WORDS = "the cat sat on a mat while rain fell over old stone walls and the dog ran home past green doors".split()


def _corpus(folder):
    folder.mkdir()
    for d in range(8):
        words = [WORDS[(d * 7 + i * (1 + i % 3)) % len(WORDS)] for i in range(300)]
        (folder / f"doc_{d}.txt").write_text(" ".join(words) + ".\n")
    return folder


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    artifact = make_artifact(tmp / "artifact", [1.0])
    port = free_port()
    policy = policy_dict(
        port,
        name="apptest",
        artifact=str(artifact),
        trainer={"data": {"paths": [str(_corpus(tmp / "corpus"))], "seq_len": 32}, "order": "forward", "depth": 2,
                 "training": {"steps": 3, "micro_batch_size": 2}, "resources": {"num_cpus": 0}},
        pools=[{"name": "accurate", "depth": 0, "resources": {"num_cpus": 0.25}, "max_concurrent_requests": 1},
               {"name": "fast", "depth": 1, "resources": {"num_cpus": 0.25}, "max_concurrent_requests": 1}],
        quality={"max_ppl_ratio": 1000.0, "max_depth": 2},
        controller={"interval_s": 0.5, "window_s": 3, "cooldown_s": 1.5, "hysteresis": 0.2, "min_samples": 2,
                    "traffic_step": 1.0},
        http={"host": "127.0.0.1", "port": port, "api_key_env": KEY_ENV, "max_prompt_tokens": 64,
              "max_tokens_limit": 32, "queue_cap": 2},
    )
    policy = load_policy(write_policy(tmp / "policy.yaml", policy))
    os.environ[KEY_ENV] = KEY
    env = ray_env()
    env["env_vars"][KEY_ENV] = KEY
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=env)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(policy), name=policy.name, route_prefix="/", external_scaler_enabled=True)
        url = f"http://127.0.0.1:{port}"
        START.update(httpx.get(f"{url}/v1/dsla/status", headers=AUTH).json())
        yield url
    finally:
        ray.shutdown()  # this process started the cluster: its Serve instance goes with it


@pytest.fixture(scope="module")
def http(app):
    with httpx.Client(base_url=app, headers=AUTH, timeout=60) as client:
        yield client


def status(http) -> dict:
    response = http.get("/v1/dsla/status")
    assert response.status_code == 200, response.text
    return response.json()


def complete(http, max_tokens=24, **extra) -> httpx.Response:
    body = {"model": MODEL, "prompt": "the cat sat", "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, **extra}
    return http.post("/v1/completions", json=body)


# ------------------------------------------------------------------------------------------------
def test_controller_shifts_traffic_deeper_under_load_and_back(http):
    start = status(http)
    assert start["routing"] == {"accurate": 1.0, "fast": 0.0}
    assert {p["name"]: p["serving_depths"] for p in start["pools"]} == {"accurate": [0], "fast": [1]}

    stop = threading.Event()
    served: list[tuple[int, str]] = []

    def worker():
        with httpx.Client(base_url=str(http.base_url), headers=AUTH, timeout=60) as client:
            while not stop.is_set():
                r = complete(client)
                served.append((r.status_code, r.headers.get("x-dsla-depth", "")))

    # load step: 3 closed-loop clients on replicas that run 1 request at a time -> 2 wait in the queue
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        for _ in range(3):
            pool.submit(worker)
        began = time.monotonic()
        try:
            shifted = wait_for(lambda: (s := status(http))["routing"]["fast"] == 1.0 and s, timeout=20)
            reacted_s = time.monotonic() - began
            wait_for(lambda: any(d == "1" for _, d in served[-3:]), timeout=10)
        finally:
            stop.set()
    assert reacted_s < 10, f"took {reacted_s:.1f} s to shift traffic"
    deeper = next(d for d in shifted["decisions"] if "deeper" in d["reason"])
    assert "waiting vs budget" in deeper["reason"] or "queue growing" in deeper["reason"], deeper["reason"]
    assert {code for code, _ in served} == {200}  # the load stayed within the queue cap

    # load drops to one client at a time: traffic returns to the accurate pool
    def back():
        r = complete(http, max_tokens=8)
        assert r.status_code == 200
        s = status(http)
        return s["routing"]["accurate"] == 1.0 and s
    final = wait_for(back, timeout=40, every=0.05)
    reasons = [d["reason"] for d in final["decisions"]]
    assert any("moved 100% of traffic shallower" in r for r in reasons), reasons[:5]
    assert final["slo"]["finished"] > 0 and final["quality"]["floor"] >= 1


def test_openai_client(app):
    client = openai.OpenAI(base_url=f"{app}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL]

    completion = client.completions.create(model=MODEL, prompt="Hello", max_tokens=5, temperature=0,
                                           logprobs=2, extra_body={"ignore_eos": True})
    choice = completion.choices[0]
    assert completion.usage.prompt_tokens == 5 and completion.usage.completion_tokens == 5
    assert len(choice.logprobs.tokens) == 5 and all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    assert all(1 <= len(top) <= 3 for top in choice.logprobs.top_logprobs) and choice.finish_reason == "length"

    echoed = client.completions.create(model=MODEL, prompt="abc", max_tokens=0, echo=True, logprobs=0)
    assert echoed.choices[0].text == "abc" and echoed.choices[0].logprobs.token_logprobs[0] is None
    assert len(echoed.choices[0].logprobs.token_logprobs) == 3 and echoed.usage.completion_tokens == 0
    by_ids = client.completions.create(model=MODEL, prompt=[104, 105], max_tokens=2, echo=True, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert by_ids.choices[0].text.startswith("hi")  # token ids echoed as the text the replica decoded

    pieces = list(client.completions.create(model=MODEL, prompt="Hello", max_tokens=6, temperature=0, stream=True,
                                            extra_body={"ignore_eos": True}))
    assert pieces[-1].choices[0].finish_reason == "length"
    again = client.completions.create(model=MODEL, prompt="Hello", max_tokens=6, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert again.system_fingerprint.startswith("dsla-depth-")
    if pieces[0].system_fingerprint == again.system_fingerprint:  # the same depth: the same greedy text
        assert "".join(c.choices[0].text for c in pieces) == again.choices[0].text

    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                          logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 4
    assert len(chat.choices[0].logprobs.content) == 4
    assert all(len(t.top_logprobs) == 2 for t in chat.choices[0].logprobs.content)
    assert chat.usage.prompt_tokens == len("user: hi\nassistant: ")

    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=4, stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == 4 and chunks[-2].choices[0].finish_reason == "length"


def test_raw_http_streaming_format(http):
    with http.stream("POST", "/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True,
            "ignore_eos": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-dsla-pool"] in ("accurate", "fast")
        raw = "".join(response.iter_text())
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    bodies = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert {b["object"] for b in bodies} == {"chat.completion.chunk"}
    assert bodies[-1]["choices"][0]["finish_reason"] == "length"

    r = complete(http, max_tokens=4, logprobs=1, echo=True)
    body = r.json()
    assert r.status_code == 200 and body["object"] == "text_completion"
    assert body["choices"][0]["text"].startswith("the cat sat")
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
    assert body["system_fingerprint"] == f"dsla-depth-{r.headers['x-dsla-depth']}"


@pytest.mark.parametrize("body, param, code", [
    (b"{not json", None, "invalid_json"),
    ({"model": MODEL, "prompt": "x", "max_tokens": "many"}, "max_tokens", "invalid_value"),
    ({"model": MODEL, "prompt": "x", "max_tokens": -3}, "max_tokens", "invalid_value"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 10_000}, "max_tokens", "max_tokens_too_large"),
    ({"model": MODEL, "prompt": "x" * 100}, "prompt", "context_length_exceeded"),
    ({"model": "gpt-5", "prompt": "x"}, "model", "model_not_found"),
    ({"model": MODEL, "prompt": "x", "tempreature": 0.5}, "tempreature", "invalid_value"),
    ({"model": MODEL, "prompt": [[5, 6], [7, 5000]]}, "prompt.1", "invalid_value"),  # the engine's vocabulary check
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(http, body, param, code):
    if isinstance(body, bytes):
        r = http.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
    else:
        r = http.post("/v1/completions", json=body)
    assert r.status_code in (400, 422), r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["code"] == code
    assert error["message"] and "Traceback" not in error["message"] and "ServeReplica" not in error["message"]
    assert complete(http, max_tokens=2).status_code == 200


def test_api_key_is_required(app):
    with httpx.Client(base_url=app, timeout=30) as anonymous:
        assert anonymous.get("/health").status_code == 200  # exempt
        for path, method in (("/v1/models", "GET"), ("/v1/completions", "POST"), ("/v1/dsla/status", "GET")):
            r = anonymous.request(method, path, json={"model": MODEL, "prompt": "x"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        wrong = anonymous.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        lower_case_scheme = anonymous.get("/v1/models", headers={"Authorization": f"bearer {KEY}"})
        assert lower_case_scheme.status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{app}/v1", api_key="nope", max_retries=0).models.list()


def test_queue_cap_answers_429_with_retry_after_and_loses_nothing(http):
    # 1 request runs per replica and 2 may wait (queue_cap): 10 long requests at once overflow it
    def one(_):
        return complete(http, max_tokens=32)

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(one, range(10)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429} and codes.count(429) >= 1 and codes.count(200) >= 3, codes
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "queue_full"
        else:
            assert r.json()["usage"]["completion_tokens"] == 32  # every admitted request ran to the end
    assert complete(http, max_tokens=2).status_code == 200


def test_trainer_publishes_a_layer_that_replicas_load_without_restart(http):
    # the trainer starts once the pools serve, so every replica started with the one-layer artifact
    assert START["quality"]["available_depth"] == 1
    assert [p["started_depth"] for p in START["pools"]] == [1, 1]
    ids = {p["name"]: p["replicas"]["ids"] for p in START["pools"]}

    def published():
        s = status(http)
        trainer = s["trainer"] or {}
        assert trainer.get("phase") != "failed", trainer
        loaded = all(p["loaded_depth"] == 2 for p in s["pools"])
        return s["quality"]["available_depth"] == 2 and loaded and s
    after = wait_for(published, timeout=150, every=1.0)
    assert {p["name"]: p["replicas"]["ids"] for p in after["pools"]} == ids  # the same replicas: no restart
    assert [p["started_depth"] for p in after["pools"]] == [1, 1]
    new = after["quality"]["depths"][1]
    assert new["depth"] == 2 and new["layer"] == 1 and new["ppl_ratio"] > 0  # measured by the trainer
    assert after["quality"]["floor"] == 2 and after["trainer"]["published_depth"] == 2
    assert complete(http, max_tokens=2).status_code == 200
