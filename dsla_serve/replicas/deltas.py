"""Engine outputs as streaming deltas: the JSON-able dicts that every Serve wrapper of an `Engine`
streams (`deployment.EngineDeployment`, `controller.pool.PoolReplica`). No Ray here.

A delta holds what is new since the previous one of the same request:

    {"request_id": str, "token_ids": [new ids], "text": new text,
     "logprobs": [{id: logprob} per new token] | None,
     "prompt_logprobs": [None | {id: logprob} per prompt token]   (first delta only, when asked),
     "prompt_tokens": int, "finish_reason": None | "stop" | "length" | "abort" | "error",
     "stop_reason": str | int | None, "error": str | None, "depth": int (the engine's depth)}
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from .outputs import RequestOutput
from .sampling import SamplingParams


def output_delta(out: RequestOutput, first: bool, depth: int) -> dict[str, Any]:
    """The part of an engine output that is new since the previous output of its stream, as plain data."""
    completion = out.outputs[0]
    new_ids = list(completion.new_token_ids)
    logprobs = None
    if completion.logprobs is not None:  # one entry per generated token: the new ones are the last
        logprobs = [dict(e) for e in completion.logprobs[len(completion.logprobs) - len(new_ids):]]
    delta = {"request_id": out.request_id, "token_ids": new_ids, "text": completion.new_text, "logprobs": logprobs,
             "finish_reason": completion.finish_reason, "stop_reason": completion.stop_reason, "error": out.error,
             "prompt_tokens": len(out.prompt_token_ids), "depth": depth}
    if first and out.prompt_logprobs is not None:
        delta["prompt_logprobs"] = [None if e is None else dict(e) for e in out.prompt_logprobs]
    return delta


def has_content(delta: dict[str, Any]) -> bool:
    """Whether a delta tells the client anything (new tokens or text, the end, or prompt log-probabilities)."""
    return bool(delta["token_ids"] or delta["text"] or delta["finish_reason"] or "prompt_logprobs" in delta)


async def stream_deltas(engine, prompt: str | Sequence[int], sampling: dict[str, Any] | None,
                        request_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
    """Queue one request on a started `engine` and yield its deltas (those with content, see
    `has_content`). `sampling` holds SamplingParams keyword arguments. Raises QueueFullError /
    ValueError on the first iteration, before any delta; when the consumer stops early (a client that went away) the request is aborted
    so its slot is freed."""
    stream = engine.add_request(prompt, SamplingParams(**(sampling or {})), request_id=request_id)
    first = True
    try:
        async for out in stream:
            delta = output_delta(out, first, engine.depth)
            first = False
            if has_content(delta):
                yield delta
    finally:
        if not stream.finished:
            stream.abort()
