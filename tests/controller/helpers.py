"""Shared helpers of the controller tests: tiny artifacts, policy files, free ports, Ray clusters."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
ORDER = [3, 1, 0, 2]  # conversion order of the 4-layer tiny Llama in these tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_artifact(path: Path, ratios: list[float], order: list[int] = ORDER) -> Path:
    """An artifact of `tiny:llama` with len(ratios) layers published (randomly initialised DSLA layers),
    each with its measured `ppl_ratio` in the manifest, as the trainer writes it."""
    import torch

    from dsla_serve.model import Artifact, DSLAConfig, convert
    from dsla_serve.model.loading import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer("tiny:llama")
    artifact = Artifact.create(path, model, base_model_id="tiny:llama", config=DSLAConfig(), order=order)
    for rank, ratio in enumerate(ratios):
        torch.manual_seed(rank)  # the gates' random init: the same artifact every time
        convert(model, [order[rank]], DSLAConfig())
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
