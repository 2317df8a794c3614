"""One request on one pool, as the ingress sees it: admission, the replica's delta stream, timing.

    run = await start_run(core, index, prompt_ids, sampling, endpoint, arrived)  # 429/503/400 raised here
    async for delta in run: ...                   # StreamDeltas; then `run.choice` holds the whole output

Every run ends in exactly one of: finished (whatever finish_reason), refused with 429/503 before it
started, or failed with an error the client is told about. The ingress's in-flight count is released
and the observation recorded in every case, so nothing is lost silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from ...replicas.messages import GenerateRequest, StreamDelta
from ...replicas.outputs import PromptTooLongError, QueueFullError
from ...replicas.sampling import SamplingParams
from .errors import APIError
from .formatting import Choice
from .ingress_state import IngressState

log = logging.getLogger("ray.serve")


class Run:
    """A request started on a pool; iterate it for deltas (the first one already received)."""

    def __init__(self, core: IngressState, pool: str, stream, first: StreamDelta, choice: Choice,
                 arrived: float, endpoint: str):
        self.core, self.pool, self.stream, self.choice = core, pool, stream, choice
        self.endpoint = endpoint
        self.arrived = arrived
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self._pending: StreamDelta | None = first
        self._closed = False
        self._note(first)

    def _note(self, delta: StreamDelta) -> None:
        if delta.token_ids:
            now = time.monotonic()
            if self.first_token_at is None:
                self.first_token_at = now
            self.last_token_at = now
        self.choice.add(delta)

    def __aiter__(self) -> AsyncIterator[StreamDelta]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[StreamDelta]:
        ok = False
        try:
            if self._pending is not None:
                first, self._pending = self._pending, None
                yield first
            if self.choice.finish_reason is None:
                async for delta in self.stream:
                    self._note(delta)
                    yield delta
                    if delta.finish_reason:
                        break
            ok = self.choice.finish_reason not in (None, "error", "abort")
        finally:
            self.close(ok)

    async def collect(self) -> Choice:
        async for _ in self:
            pass
        return self.choice

    def close(self, ok: bool) -> None:
        """Release the in-flight slot and record the observation (once)."""
        if self._closed:
            return
        self._closed = True
        if self.choice.finish_reason is None:
            self.stream.cancel()  # the client went away or an error cut the stream
        now = time.monotonic()
        n = len(self.choice.token_ids)
        ttft = None if self.first_token_at is None else self.first_token_at - self.arrived
        tpot = None
        if n > 1 and self.first_token_at is not None and self.last_token_at is not None:
            tpot = (self.last_token_at - self.first_token_at) / (n - 1)
        self.core.finished(self.pool, self.choice.depth, self.endpoint, ok, ttft, tpot, now - self.arrived)


async def start_run(core: IngressState, index: int, prompt_ids: list[int], sampling: SamplingParams, endpoint: str,
                    arrived: float, *, param: str = "prompt", return_prompt_text: bool = False) -> Run:
    """Pick a pool, admit the request and start it; raise APIError (429 / 503 / 400 / 500) if it cannot
    start. The first delta is awaited here, so a replica refusing the request (a full queue, token ids
    outside its vocabulary, a prompt too long) still yields a status code; `param` names the prompt in
    a 400. `return_prompt_text`: the first delta carries the prompt decoded (for echo and the sample)."""
    table = core.table
    pool = table.pick()
    if pool is None:
        core.refused("no_pool")
        raise APIError(503, "no pool serves within the quality floor yet (replicas are starting or changing "
                       "depth); retry shortly", code="no_pool_ready", headers=core.retry_after())
    core.arrived(pool)  # offered load, refused or not: the request rate the controller remembers
    if table.full(pool):
        core.refused("queue_full")
        raise APIError(429, f"the server is at its queue cap ({table.queue_cap} requests waiting, "
                       "http.queue_cap); retry later", code="queue_full", headers=core.retry_after())
    table.admit(pool)
    request_id = uuid.uuid4().hex
    stream = None
    try:
        request = GenerateRequest(request_id=request_id, prompt_ids=prompt_ids, sampling=sampling,
                                  return_prompt_text=return_prompt_text)
        stream = core.pools[pool].options(stream=True).generate.remote(request)
        first = await stream.__anext__()
    except asyncio.CancelledError:  # the client went away while waiting
        table.release(pool)
        if stream is not None:
            stream.cancel()
        raise
    except Exception as e:  # noqa: BLE001 - mapped to a status code for the client
        table.release(pool)
        error = _api_error(core, e, pool, param)
        core.start_failed(pool, endpoint, error.code or "error")
        raise error from None
    return Run(core, pool, stream, first, Choice(index=index, prompt_ids=prompt_ids), arrived, endpoint)


def _api_error(core: IngressState, e: Exception, pool: str, param: str) -> APIError:
    if isinstance(e, QueueFullError):
        return APIError(429, f"pool {pool} is at its queue cap; retry later", code="queue_full",
                        headers=core.retry_after())
    if isinstance(e, BackPressureError):
        return APIError(503, f"pool {pool} is overloaded; retry later", code="overloaded", headers=core.retry_after())
    if isinstance(e, PromptTooLongError):
        return APIError(400, _replica_message(e), param="max_tokens", code="context_length_exceeded")
    if isinstance(e, DeploymentUnavailableError):
        return APIError(503, f"pool {pool} is unavailable: {e}", code="pool_unavailable", headers=core.retry_after())
    if isinstance(e, (ValueError, TypeError)):  # the engine's check of the prompt's token ids
        return APIError(400, f"{param}: {_replica_message(e)}", param=param, code="invalid_value")
    log.error("request on pool %s failed to start: %r", pool, e)
    return APIError(503, f"pool {pool} failed to start the request ({type(e).__name__}); retry",
                    code="pool_error", headers=core.retry_after())


def _replica_message(e: Exception) -> str:
    """The message of the exception the replica raised: Ray's wrapper of it reads as a remote traceback."""
    cause = getattr(e, "cause", None)
    return str(cause if isinstance(cause, BaseException) else e)
