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

from dsla_serve.policies import load_policy
from tests.polling import wait_for
from tests.ports import free_port

from .helpers import local_app, make_artifact, policy_dict, ray_env, write_policy

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
    with local_app(policy, port, env) as url:
        START.update(httpx.get(f"{url}/v1/dsla/status", headers=AUTH).json())
        yield url


@pytest.fixture(scope="module")
def http(app):
    with httpx.Client(base_url=app, headers=AUTH, timeout=60) as client:
        yield client


def _trainer_processes() -> list:
    """The trainer actor's process among this test's (Ray titles it `ray::TrainerRunner...`)."""
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "TrainerRunner" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def status(http) -> dict:
    response = http.get("/v1/dsla/status")
    assert response.status_code == 200, response.text
    return response.json()


def complete(http, max_tokens=24, headers=None, **extra) -> httpx.Response:
    body = {"model": MODEL, "prompt": "the cat sat", "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, **extra}
    return http.post("/v1/completions", json=body, headers=headers)


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
    assert [m.id for m in client.models.list().data] == [MODEL, f"{MODEL}@d0", f"{MODEL}@d1"]

    completion = client.completions.create(model=MODEL, prompt="Hello", max_tokens=5, temperature=0,
                                           logprobs=2, extra_body={"ignore_eos": True})
    choice = completion.choices[0]
    assert completion.usage.prompt_tokens == 5 and completion.usage.completion_tokens == 5
    assert len(choice.logprobs.tokens) == 5 and all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    # greedy: the chosen token is the most likely, so each position names exactly 2 distinct tokens
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs) and choice.finish_reason == "length"
    assert all(max(top, key=top.get) == token for top, token in zip(choice.logprobs.top_logprobs,
                                                                     choice.logprobs.tokens))

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


def test_idle_pools_within_the_floor_take_what_the_routed_pool_cannot(http):
    # all traffic routed to one pool (1 request at a time); the other serves within the floor: 4 requests at
    # once fit (1 + 1 running, 2 waiting), with none refused while the other pool idles
    assert sorted(status(http)["routing"].values()) == [0.0, 1.0]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: complete(http, max_tokens=24), range(4)))
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    assert {r.headers["x-dsla-pool"] for r in responses} == {"accurate", "fast"}


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


def test_large_bodies_are_refused_at_once_without_stalling_others(app):
    big = json.dumps({"model": MODEL, "prompt": "x" * 10_000_000}).encode()  # 10 MB

    def chunks():  # no Content-Length: the cap is found while reading
        for i in range(0, len(big), 1 << 16):
            yield big[i:i + (1 << 16)]

    with httpx.Client(base_url=app, headers=AUTH, timeout=60) as client, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        small = pool.submit(lambda: [complete(client, max_tokens=2) for _ in range(3)])
        for content in (big, chunks()):
            began = time.monotonic()
            r = client.post("/v1/completions", content=content, headers={"Content-Type": "application/json"})
            took = time.monotonic() - began
            assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", r.text[:300]
            assert took < 1.0, f"413 took {took:.2f} s"
        began = time.monotonic()
        assert [x.status_code for x in small.result()] == [200] * 3
        assert time.monotonic() - began < 10


def test_errors_name_the_field_show_no_internals_and_give_the_request_id(http):
    for extra, param in (({"seed": 2**64}, "seed"), ({"seed": -(2**63) - 1}, "seed"), ({"top_k": 2**40}, "top_k"),
                         ({"stop_token_ids": [2**64]}, "stop_token_ids.0"), ({"temperature": 1e300}, "temperature")):
        r = complete(http, max_tokens=2, **extra)
        error = r.json()["error"]
        assert r.status_code == 400 and error["param"] == param, r.text
        assert len(r.text) < 400 and "Traceback" not in r.text and "\x1b" not in r.text
        assert r.headers["x-request-id"]
    ok = complete(http, max_tokens=2, seed=2**64 - 1, headers=None)
    assert ok.status_code == 200 and ok.json()["id"] == f"cmpl-{ok.headers['x-request-id']}"
    mine = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1},
                     headers={"X-Request-Id": "client-chosen-42"})
    assert mine.headers["x-request-id"] == "client-chosen-42" and mine.json()["id"] == "cmpl-client-chosen-42"


def test_a_batch_that_can_never_fit_is_400_with_the_reason(http):
    # two pools of one replica running one request each, and 2 waiting: at most 4 prompts at once, ever
    r = complete(http, max_tokens=2, prompt=["the cat"] * 50)
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == "batch_too_large" and "at most 4" in error["message"], r.text
    assert "retry-after" not in r.headers
    fits = complete(http, max_tokens=2, prompt=["the cat"] * 4)
    assert fits.status_code == 200 and len(fits.json()["choices"]) == 4


def test_metrics_endpoint(app):
    text = httpx.get(f"{app}/metrics", timeout=30).text  # a fixed scrape target, no key needed
    assert 'dsla_requests_total{depth="0",endpoint="completions",outcome="ok",pool="accurate"}' in text
    for line in ('dsla_ttft_seconds_bucket{depth="0",le="0.005",pool="accurate"}', 'dsla_tpot_seconds_count{',
                 'dsla_e2e_seconds_sum{', 'dsla_rejected_requests_total{reason="too_large"}',
                 'dsla_queue_length{pool="fast"}', 'dsla_routing_weight{pool="accurate"}', 'dsla_pool_depth{pool="fast"}',
                 'dsla_pool_replicas{pool="accurate"} 1.0', 'dsla_quality_floor ', 'dsla_available_depth ',
                 'dsla_policy_actor_up 1.0'):
        assert line in text, line


def test_openapi_describes_request_bodies_and_responses(app):
    doc = httpx.get(f"{app}/openapi.json", timeout=30).json()
    post = doc["paths"]["/v1/completions"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/CompletionRequest"}
    assert {"200", "400", "413", "429", "503"} <= set(post["responses"])
    schemas = doc["components"]["schemas"]
    assert {"prompt", "max_tokens", "logprobs", "seed"} <= set(schemas["CompletionRequest"]["properties"])
    assert schemas["CompletionRequest"]["properties"]["seed"]["anyOf"][0]["maximum"] == 2**64 - 1
    assert "messages" in schemas["ChatCompletionRequest"]["properties"] and "ChatMessage" in schemas
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionResponse"}
    assert "requestBody" in doc["paths"]["/tokenize"]["post"] and "requestBody" in doc["paths"]["/detokenize"]["post"]


def test_a_request_naming_a_depth_is_served_at_exactly_that_depth(http):
    cards = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert set(cards) == {MODEL, f"{MODEL}@d0", f"{MODEL}@d1"}
    card = cards[f"{MODEL}@d1"]
    assert (card["depth"], card["parent"], card["max_prompt_tokens"], card["max_tokens"], card["max_model_len"]) == \
        (1, MODEL, 64, 32, 96)  # what the policy enforces: prompts <= 64, completions <= 32, together <= 96
    for depth in (0, 1, 0, 1):
        r = complete(http, max_tokens=3, model=f"{MODEL}@d{depth}")
        body = r.json()
        assert r.status_code == 200 and body["system_fingerprint"] == f"dsla-depth-{depth}", r.text
        assert body["model"] == f"{MODEL}@d{depth}" and r.headers["x-dsla-depth"] == str(depth)
    unpublished = complete(http, max_tokens=3, model=f"{MODEL}@d9")
    assert unpublished.status_code == 400 and unpublished.json()["error"]["code"] == "model_not_found"
    with http.stream("POST", "/v1/chat/completions", json={
            "model": f"{MODEL}@d1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}) as response:
        raw = "".join(response.iter_text())
    chunks = [json.loads(e[len("data: "):]) for e in raw.split("\n\n") if e.startswith("data: {")]
    assert len(chunks) >= 5 and {c["system_fingerprint"] for c in chunks} == {"dsla-depth-1"}


def test_tokenizer_endpoints_and_long_stop_lists(http, app):
    tokens = http.post("/tokenize", json={"prompt": "hi", "add_special_tokens": False}).json()
    assert tokens["tokens"] == [104, 105] and tokens["count"] == 2 and tokens["max_model_len"] == 96
    chat = http.post("/tokenize", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["count"] == len("user: hi\nassistant: ")
    assert http.post("/detokenize", json={"tokens": [104, 105]}).json() == {"prompt": "hi"}
    bad = http.post("/detokenize", json={"tokens": [104, 5000]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    info = http.get("/tokenizer_info").json()
    assert info["eos_token"] == "</s>" and "assistant" in info["chat_template"]
    # lm-eval appends the EOS text to a task's stops: more than OpenAI's 4, as vLLM accepts
    r = complete(http, max_tokens=4, stop=["a", "b", "c", "d", "</s>", "zz", "yy"])
    assert r.status_code == 200, r.text
    assert httpx.post(f"{app}/tokenize", json={"prompt": "hi"}, timeout=30).status_code == 401  # the key applies


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
    # its run is over: the policy actor ends the trainer's process (its memory goes back) and keeps its progress
    wait_for(lambda: status(http)["trainer"]["phase"] == "done" and not _trainer_processes(), timeout=60)
    assert status(http)["trainer"]["published_depth"] == 2
    assert complete(http, max_tokens=2).status_code == 200
