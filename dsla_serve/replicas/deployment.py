"""A thin Ray Serve deployment around one `Engine` (the only module of `replicas` that imports Ray).

    from ray import serve
    from dsla_serve.replicas.deployment import EngineDeployment
    handle = serve.run(EngineDeployment.options(user_config={"depth": 8}).bind(
        "path/to/model", artifact="path/to/artifact", engine_kwargs={"max_model_len": 4096}))
    async for delta in handle.options(stream=True).generate.remote("Hello", {"max_tokens": 32}):
        print(delta["text"], end="")

or from the command line: `serve run dsla_serve.replicas.deployment:build_app model=tiny:llama`.

- `generate(prompt, sampling, request_id)`: an async stream of JSON-able deltas (`deltas.py`: new text /
  token ids / logprobs since the previous one; `finish_reason` and `error` on the last;
  `prompt_logprobs` on the first when asked); a client that goes away aborts its request.
- `reconfigure(user_config)`: Serve calls it with the deployment's `user_config` at start and on every
  change, without restarting the replica: `{"depth": d, "refresh_artifact": true}` first loads
  layers published in the artifact since (default true when the engine has an artifact), then
  moves to depth d by draining (no request is dropped).
- `stats()`: the engine's load and latency figures (`Engine.stats()`) plus the replica id, for routing
  and autoscaling.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from ray import serve

from .deltas import stream_deltas
from .engine import Engine
from .sampling import SamplingParams


def serve_replica_id() -> str:
    """This Serve replica's unique id; a random one outside a Serve replica (tests, plain actors)."""
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - no replica context here
        return uuid.uuid4().hex[:8]


@serve.deployment(max_ongoing_requests=256)
class EngineDeployment:
    """One engine replica. `model` and `artifact` as for `Engine`; `engine_kwargs` are its other
    arguments (max_model_len, max_num_seqs, memory_budget_bytes, dtype, device, ...)."""

    def __init__(self, model: str = "tiny:llama", artifact: str | None = None, depth: int = 0,
                 engine_kwargs: dict[str, Any] | None = None):
        self.engine = Engine(model, artifact=artifact, depth=depth, **(engine_kwargs or {}))
        self.engine.start()
        self.replica_id = serve_replica_id()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        unknown = set(user_config) - {"depth", "refresh_artifact"}
        if unknown:
            raise ValueError(f"unknown user_config key(s) {sorted(unknown)}; known: depth, refresh_artifact")
        if user_config.get("refresh_artifact", self.engine.artifact is not None):
            # waits for the engine's next step boundary: off the replica's event loop, so streams go on
            await asyncio.to_thread(self.engine.refresh_artifact)
        if "depth" in user_config:
            self.engine.set_depth(int(user_config["depth"]))

    async def generate(self, prompt: str | list[int], sampling: dict[str, Any] | None = None,
                       request_id: str | None = None):
        """Async generator of deltas (see `deltas.py`). Raises QueueFullError / ValueError before the first."""
        async for delta in stream_deltas(self.engine, prompt, sampling, request_id):
            yield delta

    async def generate_text(self, prompt: str | list[int], sampling: dict[str, Any] | None = None) -> dict[str, Any]:
        """The whole completion at once: {"text", "token_ids", "finish_reason", "error", "depth"}."""
        stream = self.engine.add_request(prompt, SamplingParams(**(sampling or {})))
        out = None
        async for out in stream:
            pass
        c = out.outputs[0]
        return {"text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason, "error": out.error,
                "depth": self.engine.depth}

    def stats(self) -> dict[str, Any]:
        return {**self.engine.stats(), "replica": self.replica_id}

    def check_health(self) -> None:
        if not self.engine.running_loop:
            raise RuntimeError("the engine loop thread is not running")

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.stop()


def build_app(args: dict[str, str]) -> serve.Application:
    """`serve run dsla_serve.replicas.deployment:build_app model=... artifact=... depth=... max_model_len=...`"""
    args = dict(args)
    model = args.pop("model", "tiny:llama")
    artifact = args.pop("artifact", None)
    depth = int(args.pop("depth", 0))
    ints = {"max_model_len", "max_num_seqs", "max_queue", "prefill_chunk_tokens", "memory_budget_bytes"}
    kwargs = {k: int(v) if k in ints else v for k, v in args.items()}
    return EngineDeployment.options(user_config={"depth": depth}).bind(model, artifact=artifact, depth=depth,
                                                                      engine_kwargs=kwargs)


__all__ = ["EngineDeployment", "build_app", "serve_replica_id"]
