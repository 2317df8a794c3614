"""Capacity under load on the whole app (local Ray, CPU, tiny model): the policy actor really scales a
pool up and down through Serve, and a replica killed under load costs no request (those not yet
started run on another replica; a non-streamed one in progress runs again)."""

from __future__ import annotations

import threading

import httpx
import pytest
import ray

from dsla_serve.policies import load_policy
from tests.polling import wait_for
from tests.ports import free_port

from .helpers import local_app, policy_dict, write_policy

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    port = free_port()
    policy = policy_dict(
        port, name="capacity",
        pools=[{"name": "accurate", "depth": 0, "min_replicas": 1, "max_replicas": 2, "resources": {"num_cpus": 0.25},
                "max_concurrent_requests": 2}],
        controller={"interval_s": 0.5, "window_s": 3, "cooldown_s": 1.5, "hysteresis": 0.2, "min_samples": 2},
        http={"host": "127.0.0.1", "port": port, "max_prompt_tokens": 64, "max_tokens_limit": 32, "queue_cap": 16},
    )
    policy = load_policy(write_policy(tmp_path_factory.mktemp("capacity") / "policy.yaml", policy))
    with local_app(policy, port) as url:
        yield url


class Load:
    """`clients` closed-loop clients of non-streamed completions; records every status code."""

    def __init__(self, url: str, clients: int, max_tokens: int):
        self.url, self.max_tokens = url, max_tokens
        self.codes: list[int] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self):
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while not self.stop.is_set():
                r = client.post("/v1/completions", json={"model": MODEL, "prompt": "the cat sat", "temperature": 0,
                                                         "max_tokens": self.max_tokens, "ignore_eos": True})
                self.codes.append(r.status_code if r.status_code != 200 or
                                  r.json()["usage"]["completion_tokens"] == self.max_tokens else -1)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


def _pool(url: str) -> dict:
    return httpx.get(f"{url}/v1/dsla/status", timeout=30).json()["pools"][0]


def _replica_actors() -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "pool-accurate" in a["name"]]


def test_the_pool_scales_up_under_load_survives_a_killed_replica_and_scales_down(app):
    assert _pool(app)["replicas"]["running"] == 1
    with Load(app, clients=6, max_tokens=24) as heavy:  # 6 requests on 2 slots: the queue says "high"
        up = wait_for(lambda: (p := _pool(app))["replicas"]["running"] == 2 and p, timeout=120, every=0.5)
        assert up["replicas"]["target"] == 2
        before = len(heavy.codes)
        wait_for(lambda: len(heavy.codes) >= before + 6, timeout=60)  # both replicas busy
        victim = _replica_actors()[0]
        killed_at = len(heavy.codes)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        wait_for(lambda: len(heavy.codes) >= killed_at + 12, timeout=120)
    after_kill = heavy.codes[killed_at:]
    assert set(heavy.codes) == {200}, f"{len(after_kill)} after the kill: {sorted(set(after_kill))}"

    # a light load with quick answers: after the cooldown the second replica goes
    with Load(app, clients=1, max_tokens=2) as light:
        down = wait_for(lambda: (p := _pool(app))["replicas"]["running"] == 1 and p["replicas"]["target"] == 1 and p,
                        timeout=120, every=0.5)
    assert set(light.codes) == {200}
    status = httpx.get(f"{app}/v1/dsla/status", timeout=30).json()
    assert status["controller"]["scaling_error"] is None
    reasons = [d["reason"] for d in status["decisions"]]
    assert any("replicas accurate 2->1" in r for r in reasons), reasons[:5]
    assert victim not in _replica_actors() and len(down["replicas"]["ids"]) == 1
