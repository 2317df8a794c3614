"""Faults on a two-node cluster, under load (slow: several minutes on two cores; `-m slow` runs them):

- a worker node killed: its replica is gone at once; Serve starts a replacement where the pool's custom
  resource is free (a node added after the loss, as an autoscaler would) and it pulls its layers from
  the object store into that node's cache. Measured: requests lost, requests hung, time until every
  request succeeds again, time until the pool is whole again.
- the object store unreachable while the trainer publishes a layer: the trainer retries with backoff,
  replicas keep serving the depth they hold, and the layer appears (and is loaded) only once the store
  answers. Measured: requests lost, time from the store's return to the layer published and served.

Each test prints its figures as one JSON line; with DSLA_FAULT_RESULTS=path they are also appended there.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import httpx
import pytest
import yaml

from tests.controller.helpers import make_artifact
from tests.polling import wait_for
from tests.ports import free_port

from .harness import LocalCluster
from .workload import Load, corpus, summary

pytestmark = pytest.mark.slow


def record(name: str, figures: dict) -> None:
    from importlib.metadata import version

    machine = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
               "load_average": [round(x, 1) for x in os.getloadavg()], "python": sys.version.split()[0],
               **{package: version(package) for package in ("ray", "s3fs", "moto", "torch")}}
    line = json.dumps({"scenario": name, **figures, "machine": machine}, sort_keys=True)
    print(line)
    path = os.environ.get("DSLA_FAULT_RESULTS")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def write_policy(path, port: int, **sections) -> str:
    policy = {
        "name": "faults",
        "model": {"path": "tiny:llama", "dtype": "float32", "max_model_len": 256},
        "slo": {"ttft_p95_ms": 20000, "tpot_p95_ms": 10000},
        "quality": {"max_ppl_ratio": 1000.0, "max_depth": 2},
        "controller": {"interval_s": 0.5, "window_s": 3, "cooldown_s": 1.5, "min_samples": 2},
        "http": {"host": "127.0.0.1", "port": port, "max_prompt_tokens": 64, "max_tokens_limit": 32,
                 "queue_cap": 64},
        **sections,
    }
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return str(path)


def status(url: str) -> dict:
    return httpx.get(f"{url}/v1/dsla/status", timeout=30).json()


def deploy(cluster: LocalCluster, policy: str) -> None:
    done = cluster.cli("deploy", policy, "--address", cluster.address, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]


def test_a_worker_node_killed_under_load(s3, tmp_path):
    bucket = s3.create_bucket("faults-node")
    artifact = f"s3://{bucket}/art"
    make_artifact(artifact, [1.0])  # one published layer, in the store only
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    policy = write_policy(tmp_path / "policy.yaml", port, artifact=artifact, pools=[
        {"name": "fast", "depth": 1, "min_replicas": 2, "max_replicas": 2, "max_concurrent_requests": 2,
         "resources": {"num_cpus": 0.5, "custom": {"serving": 1}}}])
    with LocalCluster(tmp_path / "nodes", head_resources={"serving": 1}) as cluster:
        cluster.add_node("worker-1", resources={"serving": 1})
        deploy(cluster, policy)

        def whole(cache_node: str):
            s = status(url)
            pool = s["pools"][0]
            cached = list((cluster.scratch(cache_node) / "cache" / "layers").glob("*.safetensors"))
            return pool["replicas"]["running"] == 2 and pool["loaded_depth"] == 1 and cached and s

        before = wait_for(lambda: whole("worker-1"), timeout=240, every=1.0)
        load = Load(url, clients=3, deadline_s=60).start()
        time.sleep(10)  # steady load on both replicas
        killed = time.monotonic()
        cluster.kill("worker-1")
        time.sleep(5)  # then a new node joins, as an autoscaler would add one
        added = time.monotonic()
        cluster.add_node("worker-2", resources={"serving": 1})
        after = wait_for(lambda: whole("worker-2"), timeout=300, every=0.5)
        back = time.monotonic()
        time.sleep(10)  # and the whole pool serves again
        outcomes = load.stop()
    assert set(before["pools"][0]["replicas"]["ids"]) != set(after["pools"][0]["replicas"]["ids"])
    figures = summary(outcomes, killed)
    last_failure = max((o.ended for o in outcomes if not o.ok), default=killed)
    figures.update(
        before_kill=sum(o.sent < killed for o in outcomes),
        service_recovered_s=round(last_failure - killed, 1),  # every request sent later succeeded
        pool_whole_after_node_added_s=round(back - added, 1),
        pool_whole_after_kill_s=round(back - killed, 1))
    record("worker node killed under load", figures)
    assert figures["hung"] == 0, figures
    assert all(o.ok for o in outcomes if o.sent > back), figures
    assert figures["ok"] > figures["failed"], figures


def test_the_store_unreachable_during_a_publish(s3, tmp_path):
    bucket = s3.create_bucket("faults-store")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    policy = write_policy(
        tmp_path / "policy.yaml", port,
        trainer={"data": {"paths": [str(corpus(tmp_path / "corpus"))], "seq_len": 32,
                          "episodes": {"passkey_fraction": 0, "recall_fraction": 0}},
                 "output_dir": f"s3://{bucket}/run", "order": "forward", "depth": 2,
                 "training": {"steps": 120, "micro_batch_size": 2},
                 "resources": {"num_cpus": 0, "custom": {"trainer_node": 1}}},
        pools=[{"name": "fast", "depth": 2, "max_concurrent_requests": 2,
                "resources": {"num_cpus": 0.5, "custom": {"serving": 1}}}])
    with LocalCluster(tmp_path / "nodes", head_resources={"trainer_node": 1}) as cluster:
        cluster.add_node("worker", resources={"serving": 1})
        deploy(cluster, policy)
        wait_for(lambda: status(url)["pools"][0]["serving_depths"] == [1], timeout=300, every=0.5)
        load = Load(url, clients=2, deadline_s=60).start()
        s3.stop()  # the trainer is on layer 2 now (120 steps): its publish will meet a store that does not answer
        down = time.monotonic()
        seen = []

        def retrying():
            s = status(url)
            seen.append(s)
            trainer = s["trainer"] or {}
            assert s["quality"]["available_depth"] < 2, "layer 2 was published before the store went away"
            return trainer.get("phase") == "publishing" and "store unreachable" in (trainer.get("error") or "") and s

        first_retry = wait_for(retrying, timeout=300, every=1.0)
        time.sleep(15)  # the store stays away through more retries
        last_down = status(url)
        seen.append(last_down)
        s3.start()
        up = time.monotonic()

        def served_at_2():
            s = status(url)
            seen.append(s)
            assert s["trainer"]["phase"] != "failed", s["trainer"]
            return s["pools"][0]["serving_depths"] == [2] and s

        done = wait_for(served_at_2, timeout=300, every=0.5)
        served = time.monotonic()
        time.sleep(5)
        outcomes = load.stop()
        keys = s3.keys(bucket)
        cache = sorted(p.stem for p in (cluster.scratch("worker") / "cache" / "layers").glob("*.safetensors"))
    during = [s for s in seen if s["quality"]["available_depth"] < 2]
    figures = summary(outcomes, down)
    figures.update(
        outage_s=round(up - down, 1),
        first_failed_publish_seen_s=round(first_retry["uptime_s"] - seen[0]["uptime_s"], 1),
        failed_publish_attempts=int(re.search(r"attempt (\d+) failed", last_down["trainer"]["error"]).group(1)),
        layer_served_after_store_back_s=round(served - up, 1),
        depths_served=sorted({o.depth for o in outcomes if o.ok}))
    record("store unreachable during a publish", figures)
    assert figures["failed"] == 0 and figures["hung"] == 0, figures  # replicas kept serving throughout
    assert all(s["pools"][0]["loaded_depth"] <= 1 for s in during)  # nothing loaded before it was published
    assert any(s["quality"]["artifact_error"] for s in during)  # the policy actor saw the store fail
    assert done["quality"]["available_depth"] == 2 and done["trainer"]["published_depth"] == 2
    assert keys == ["run/layer_0.safetensors", "run/layer_1.safetensors", "run/manifest.json"]
    manifest = json.loads(s3.client().get_object(Bucket=bucket, Key="run/manifest.json")["Body"].read())
    assert cache == sorted(e["sha256"] for e in manifest["layers"])  # what the replica loaded is what was published
