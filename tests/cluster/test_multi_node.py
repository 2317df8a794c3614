"""The app deployed onto a two-node Ray cluster with its artifact in an S3-compatible store, and no path
shared between the nodes: the trainer is pinned to the head node, the pool to the worker node (custom
resources), the trainer publishes a layer to S3 and the remote replica pulls it into its node's cache and
serves it, without a restart. `dsla-serve deploy --address` and `dsla-serve status` run as a user runs
them, in their own processes."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import yaml

from tests.polling import wait_for
from tests.ports import free_port

from .harness import LocalCluster
from .workload import corpus

BUCKET = "dsla-cluster"


@pytest.fixture(scope="module")
def deployed(s3, tmp_path_factory):
    """(cluster, base URL, policy path) of the deployed app; the cluster and app torn down afterwards."""
    tmp = tmp_path_factory.mktemp("cluster")
    s3.create_bucket(BUCKET)
    port = free_port()
    policy = {
        "name": "cluster",
        "model": {"path": "tiny:llama", "dtype": "float32", "max_model_len": 256},
        "trainer": {"data": {"paths": [str(corpus(tmp / "corpus"))], "seq_len": 32,
                             "episodes": {"passkey_fraction": 0, "recall_fraction": 0}},
                    "output_dir": f"s3://{BUCKET}/run", "order": "forward", "depth": 1,
                    "training": {"steps": 40, "micro_batch_size": 2},
                    "resources": {"num_cpus": 0, "custom": {"trainer_node": 1}}},
        "pools": [{"name": "fast", "depth": 1, "max_concurrent_requests": 2,
                   "resources": {"num_cpus": 0.5, "custom": {"serving": 1}}}],
        "quality": {"max_ppl_ratio": 1000.0, "max_depth": 1},
        "slo": {"ttft_p95_ms": 20000, "tpot_p95_ms": 10000},
        "controller": {"interval_s": 0.5, "window_s": 3, "cooldown_s": 1.5, "min_samples": 2},
        "http": {"host": "127.0.0.1", "port": port, "max_prompt_tokens": 64, "max_tokens_limit": 32},
    }
    path = tmp / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    with LocalCluster(tmp / "nodes", head_resources={"trainer_node": 1}) as cluster:
        cluster.add_node("worker", num_cpus=2, resources={"serving": 1})
        began = time.monotonic()
        done = cluster.cli("deploy", str(path), "--address", cluster.address)
        assert done.returncode == 0, done.stdout + done.stderr[-4000:]
        assert "deployed 'cluster'" in done.stdout
        print(f"deployed in {time.monotonic() - began:.1f} s: {done.stdout.strip()}")
        url = f"http://127.0.0.1:{port}"
        try:
            yield cluster, url, path
        finally:
            stopped = cluster.serve_shutdown()
            assert stopped.returncode == 0, stopped.stderr[-2000:]
    with pytest.raises(httpx.HTTPError):  # the app and the cluster are gone
        httpx.get(f"{url}/health", timeout=2)


def complete(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", timeout=60,
                      json={"model": "tiny-llama", "prompt": "the cat sat", "max_tokens": 4, "temperature": 0})


def status(url: str) -> dict:
    return httpx.get(f"{url}/v1/dsla/status", timeout=10).json()


def test_a_layer_published_on_one_node_is_served_by_a_replica_on_another(deployed, s3):
    cluster, url, policy = deployed
    before = complete(url)
    assert before.status_code == 200, before.text
    if status(url)["quality"]["available_depth"] == 0:  # answered before the trainer published anything
        assert before.headers["X-DSLA-Depth"] == "0"

    def loaded():
        s = status(url)
        assert (s["trainer"] or {}).get("phase") != "failed", s["trainer"]
        pool = s["pools"][0]
        return pool["loaded_depth"] == 1 and pool["serving_depths"] == [1] and s

    after = wait_for(loaded, timeout=240, every=1.0)
    response = complete(url)
    assert response.status_code == 200 and response.headers["X-DSLA-Depth"] == "1"
    assert after["pools"][0]["started_depth"] == 0  # the same replica, which started before the layer existed
    assert after["quality"]["artifact"] == f"s3://{BUCKET}/run" and after["quality"]["artifact_error"] is None

    # the artifact exists in the store only; the worker node pulled the layer into its own cache
    assert s3.keys(BUCKET) == ["run/layer_0.safetensors", "run/manifest.json"]
    manifest = json.loads(s3.client().get_object(Bucket=BUCKET, Key="run/manifest.json")["Body"].read())
    sha = manifest["layers"][0]["sha256"]
    assert [p.name for p in (cluster.scratch("worker") / "cache" / "layers").iterdir()] == [f"{sha}.safetensors"]
    on_disk = [p for p in cluster.root.parent.rglob("*") if p.name == "manifest.json" or
               (p.suffix == ".safetensors" and p.parent.name != "layers")]
    assert on_disk == []
    assert not (cluster.scratch("head") / "cache" / "layers").exists()  # the trainer's node kept nothing local

    shown = cluster.cli("status", "--url", url)
    assert shown.returncode == 0, shown.stderr
    assert "fast" in shown.stdout and "1/1/1" in shown.stdout and "quality floor 1" in shown.stdout, shown.stdout
    raw = json.loads(cluster.cli("status", "--url", url, "--json").stdout)
    assert raw["trainer"]["phase"] == "done" and raw["trainer"]["published_depth"] == 1
