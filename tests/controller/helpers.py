"""Shared helpers of the controller tests: tiny artifacts, policy files, free ports, Ray clusters."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import yaml

from dsla_serve.replicas.messages import EngineStats, ReplicaReport

REPO = Path(__file__).resolve().parents[2]
ORDER = [3, 1, 0, 2]  # conversion order of the 4-layer tiny Llama in these tests


def make_artifact(path: Path, ratios: list[float], order: list[int] = ORDER) -> Path:
    """An artifact of `tiny:llama` with len(ratios) layers published (randomly initialised DSLA layers),
    each with its measured `ppl_ratio` in the manifest, as the trainer writes it. On an artifact made by
    this function it publishes the layers that are missing (the same ones every time)."""
    import torch

    from dsla_serve.model import Artifact, DSLAConfig, convert
    from dsla_serve.model.loading import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer("tiny:llama")
    artifact = Artifact.create(path, model, base_model_id="tiny:llama", config=DSLAConfig(), order=order)
    for rank, ratio in enumerate(ratios):
        torch.manual_seed(rank)  # the gates' random init: the same artifact every time
        convert(model, [order[rank]], DSLAConfig())
        if rank >= artifact.depth:
            artifact.append_layer(model, order[rank], {"ppl_ratio": ratio, "val_loss": 5.0})
    return path


def policy_dict(port: int, **sections) -> dict:
    """A small policy for tests: one depth-0 pool on tiny:llama; `sections` replace whole sections."""
    policy = {
        "name": "test",
        "model": {"path": "tiny:llama", "dtype": "float32", "max_model_len": 256},
        "pools": [{"name": "accurate", "depth": 0, "resources": {"num_cpus": 0.25}, "max_concurrent_requests": 2}],
        "slo": {"ttft_p95_ms": 20000, "tpot_p95_ms": 10000},
        "controller": {"interval_s": 0.5, "window_s": 3, "cooldown_s": 1.5, "min_samples": 2},
        "http": {"host": "127.0.0.1", "port": port, "max_prompt_tokens": 64, "max_tokens_limit": 32, "queue_cap": 4},
    }
    policy.update(sections)
    return policy


def write_policy(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def ray_env() -> dict:
    """runtime_env that lets Ray's workers import dsla_serve from this checkout."""
    paths = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}


@contextmanager
def local_app(policy, port: int, env: dict | None = None):
    """Serve a loaded `policy` on a fresh local Ray (2 CPUs) for the block; yields the base URL. The
    cluster, and its Serve instance with it, goes when the block ends."""
    import ray
    from ray import serve

    from dsla_serve.controller.app import application

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env=env if env is not None else ray_env())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(policy), name=policy.name, route_prefix="/", external_scaler_enabled=True)
        yield f"http://127.0.0.1:{port}"
    finally:
        ray.shutdown()


def replica_report(pool, replica, depth, waiting=0, running=0, cache_token_usage=0.0, max_depth=4) -> ReplicaReport:
    """What a replica of `pool` reports: its engine at `depth` with these loads (the other figures zero)."""
    engine = EngineStats(depth=depth, pending_depth=None, draining=False, max_depth=max_depth, running=running,
                         waiting=waiting, queue_cap=8, max_num_seqs=2, max_model_len=64, cache_usage=0.0,
                         cache_token_usage=cache_token_usage, cuda_graphs="off", ttft_p50_s=None, ttft_p95_s=None, tpot_p50_s=None,
                         tpot_p95_s=None, tokens_per_s=0.0, requests_total=0, completed=0, failed=0, aborted=0,
                         generated_tokens=0)
    return ReplicaReport(pool=pool, replica_id=replica, started_max_depth=max_depth, engine=engine)
