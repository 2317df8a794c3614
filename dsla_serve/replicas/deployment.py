"""A thin Ray Serve deployment around one `Engine` (the only module of `replicas` that imports Ray).

    from ray import serve
    from dsla_serve.replicas.deployment import EngineDeployment
    handle = serve.run(EngineDeployment.options(user_config={"depth": 8}).bind(
        "path/to/model", artifact="path/to/artifact", engine_kwargs={"max_model_len": 4096}))
    async for delta in handle.options(stream=True).generate.remote("Hello", {"max_tokens": 32}):
        print(delta["text"], end="")

or from the command line: `serve run dsla_serve.replicas.deployment:build_app model=tiny:llama`.

- `generate(prompt, sampling, request_id)`: an async stream of JSON-able deltas (new text / token ids /
  logprobs since the previous one; `finish_reason` and `error` on the last; `prompt_logprobs` on the
  first when asked); a client that goes away aborts its request.
- `reconfigure(user_config)`: Serve calls it with the deployment's `user_config` at start and on every
  change, without restarting the replica: `{"depth": d, "refresh_artifact": true}` first loads
  layers published in the artifact since (default true when the engine has an artifact), then
  moves to depth d by draining (no request is dropped).
- `stats()`: the engine's load and latency figures (`Engine.stats()`) plus the replica id, for routing
  and autoscaling.
"""

from __future__ import annotations

import uuid
from typing import Any

from ray import serve

from .engine import Engine
from .outputs import RequestOutput
from .sampling import SamplingParams


def output_delta(out: RequestOutput, first: bool, depth: int) -> dict[str, Any]:
    """The part of an engine output that is new since the previous one, as plain data."""
    c = out.outputs[0]
    n = len(c.new_token_ids)
    delta = {"request_id": out.request_id, "text": c.new_text, "token_ids": list(c.new_token_ids),
             "logprobs": None if c.logprobs is None else [dict(e) for e in c.logprobs[len(c.logprobs) - n:]],
             "finish_reason": c.finish_reason, "stop_reason": c.stop_reason, "error": out.error, "depth": depth,
             "prompt_tokens": len(out.prompt_token_ids)}
    if first and out.prompt_logprobs is not None:
        delta["prompt_logprobs"] = [None if e is None else dict(e) for e in out.prompt_logprobs]
    return delta


@serve.deployment(max_ongoing_requests=256)
class EngineDeployment:
    """One engine replica. `model` and `artifact` as for `Engine`; `engine_kwargs` are its other
    arguments (max_model_len, max_num_seqs, memory_budget_bytes, dtype, device, ...)."""

    def __init__(self, model: str = "tiny:llama", artifact: str | None = None, depth: int = 0,
                 engine_kwargs: dict[str, Any] | None = None):
        self.engine = Engine(model, artifact=artifact, depth=depth, **(engine_kwargs or {}))
        self.engine.start()
        try:
            self.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - constructed outside a Serve replica (tests)
            self.replica_id = uuid.uuid4().hex[:8]

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        unknown = set(user_config) - {"depth", "refresh_artifact"}
        if unknown:
            raise ValueError(f"unknown user_config key(s) {sorted(unknown)}; known: depth, refresh_artifact")
        if user_config.get("refresh_artifact", self.engine.artifact is not None):
            self.engine.refresh_artifact()
        if "depth" in user_config:
            self.engine.set_depth(int(user_config["depth"]))

    async def generate(self, prompt: str | list[int], sampling: dict[str, Any] | None = None,
                       request_id: str | None = None):
        """Async generator of deltas (see `output_delta`). Raises QueueFullError / ValueError at once."""
        stream = self.engine.add_request(prompt, SamplingParams(**(sampling or {})), request_id=request_id)
        first = True
        try:
            async for out in stream:
                yield output_delta(out, first, self.engine.depth)
                first = False
        finally:
            if not stream.finished:  # the caller went away: free the slot
                stream.abort()

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


__all__ = ["EngineDeployment", "build_app", "output_delta"]
