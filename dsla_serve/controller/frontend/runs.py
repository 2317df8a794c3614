"""Requests on pools, as the ingress sees them: placement, the replica's delta stream, retries, timing.

    runs = await start_runs(core, batch)           # 400/429/503 raised here, before anything is sent
    async for delta in runs[0]: ...                # StreamDeltas; then `run.choice` holds the whole output
    await runs[0].collect()                        # or run to the end (a non-streamed response)

A batch is placed whole (`RoutingTable.place`: spill-over to pools within the floor before refusing),
then every prompt starts at once. A request whose replica dies before its first delta is started
again, on the same pool (Serve routes to a live replica) or on one with room; so is one still waiting
for its first delta on a pool the policy emptied (no replica target, none reporting: Serve would hold
it until a replica of that pool starts, which may be never); a non-streamed request
whose replica dies later is run again from the start (nothing has reached the client yet), up to
MAX_ATTEMPTS. Every run ends in exactly one of: finished (whatever finish_reason), refused before it
started, or failed with an error the client is told about. The ingress's in-flight count is released
and the observation recorded in every case, so nothing is lost silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from ...replicas.messages import GenerateRequest, StreamDelta
from ...replicas.outputs import DepthUnavailableError, PromptTooLongError, QueueFullError
from ...replicas.sampling import SamplingParams
from .errors import APIError, internal_error
from .formatting import Choice
from .ingress_state import IngressState
from .routing import Refusal

log = logging.getLogger("ray.serve")

MAX_ATTEMPTS = 3
RETRY_DELAY_S = 0.25
REPLICA_GONE = (RayActorError, ReplicaUnavailableError)  # the replica died or is unreachable: start again
STRANDED_CHECK_S = 1.0  # how often a request waiting for its first delta checks that its pool still has replicas


class PoolEmptied(Exception):
    """The request waits, not started, on a pool with no replica target and no replica reporting."""


@dataclass(frozen=True)
class Prompt:
    """One prompt of a request: its ids and sampling, the field that names it in errors (`prompt.1`),
    and whether the replica should send its text back."""

    ids: list[int]
    sampling: SamplingParams
    param: str = "prompt"
    return_text: bool = False


@dataclass(frozen=True)
class Batch:
    """What a request asks to run: its prompts, on which route, pinned to a depth or not; `request_id`
    is the ingress's id of the HTTP request (in logs and in errors)."""

    request_id: str
    endpoint: str
    prompts: list[Prompt]
    depth: int | None = None


class Run:
    """A request started on a pool; iterate it for deltas (the first one already received)."""

    def __init__(self, core: IngressState, batch: Batch, index: int, pool: str, arrived: float):
        self.core, self.batch, self.index, self.pool = core, batch, index, pool
        self.prompt = batch.prompts[index]
        self.arrived = arrived
        self.attempts = 0
        self.stream = None
        self.choice = Choice(index=index, prompt_ids=self.prompt.ids)
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self._pending: StreamDelta | None = None
        self._closed = False

    # ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Send the request to a replica and wait for its first delta; APIError when it cannot start (the
        in-flight slot is then released)."""
        try:
            while True:
                self.attempts += 1
                request = GenerateRequest(
                    request_id=f"{self.batch.request_id}-{self.index}-{self.attempts}", prompt_ids=self.prompt.ids,
                    sampling=self.prompt.sampling, return_prompt_text=self.prompt.return_text, depth=self.batch.depth)
                self.stream = self.core.pools[self.pool].options(stream=True).generate.remote(request)
                try:
                    self._pending = await self._first_delta()
                except (*REPLICA_GONE, PoolEmptied) as e:
                    if self.attempts >= MAX_ATTEMPTS:
                        raise
                    self._moved(e)
                    await asyncio.sleep(RETRY_DELAY_S * self.attempts)  # Serve's router learns the replica is gone
                    continue
                self._note(self._pending)
                return
        except asyncio.CancelledError:  # the client went away while waiting
            self._abandon()
            raise
        except Exception as e:  # noqa: BLE001 - mapped to a status code for the client
            self._abandon()
            error = _api_error(self.core, e, self.pool, self.prompt.param, self.batch.request_id)
            self.core.refused(error.code or "error")
            raise error from None

    async def _first_delta(self) -> StreamDelta:
        """The stream's first delta; PoolEmptied when, meanwhile, the policy emptied the pool (checked every
        STRANDED_CHECK_S; a request pinned to a depth waits as long as it takes)."""
        if self.batch.depth is not None:
            return await self.stream.__anext__()
        first = asyncio.ensure_future(self.stream.__anext__())
        try:
            while True:
                done, _ = await asyncio.wait({first}, timeout=STRANDED_CHECK_S)
                if done:
                    return first.result()
                if self.core.table.emptied(self.pool):
                    first.cancel()
                    self.stream.cancel()
                    raise PoolEmptied(f"pool {self.pool} has no replica target and none reporting")
        except asyncio.CancelledError:
            first.cancel()
            raise

    def _moved(self, e: Exception) -> None:
        log.warning("request %s: pool %s lost its replica before the request started (%s); starting it again",
                    self.batch.request_id, self.pool, type(e).__name__)
        if self.batch.depth is None:
            self.pool = self.core.table.move(self.pool)

    def _abandon(self) -> None:
        self._closed = True
        self.core.table.release(self.pool)
        if self.stream is not None:
            self.stream.cancel()

    def _note(self, delta: StreamDelta) -> None:
        if delta.token_ids:
            now = time.monotonic()
            if self.first_token_at is None:
                self.first_token_at = now
            self.last_token_at = now
        self.choice.add(delta)

    # ------------------------------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[StreamDelta]:
        return self._iterate()

    async def _deltas(self) -> AsyncIterator[StreamDelta]:
        if self._pending is not None:
            first, self._pending = self._pending, None
            yield first
        if self.choice.finish_reason is None:
            async for delta in self.stream:
                self._note(delta)
                yield delta
                if delta.finish_reason:
                    break

    async def _iterate(self) -> AsyncIterator[StreamDelta]:
        ok = False
        try:
            async for delta in self._deltas():
                yield delta
            ok = self.choice.finish_reason not in (None, "error", "abort")
        finally:
            self.close(ok)

    async def collect(self) -> Choice:
        """Run to the end (a non-streamed response): a replica lost on the way runs it again from the start."""
        ok = False
        try:
            while True:
                try:
                    async for _ in self._deltas():
                        pass
                    break
                except REPLICA_GONE as e:
                    if self.attempts >= MAX_ATTEMPTS:
                        raise
                    log.warning("request %s: pool %s lost its replica mid-request (%s); running it again",
                                self.batch.request_id, self.pool, type(e).__name__)
                    self.choice = Choice(index=self.index, prompt_ids=self.prompt.ids)
                    self.first_token_at = self.last_token_at = None
                    if self.batch.depth is None:
                        self.pool = self.core.table.move(self.pool)
                    await asyncio.sleep(RETRY_DELAY_S * self.attempts)
                    await self.start()
            ok = self.choice.finish_reason not in (None, "error", "abort")
        finally:
            self.close(ok)
        return self.choice

    def close(self, ok: bool) -> None:
        """Release the in-flight slot and record the observation (once)."""
        if self._closed:
            return
        self._closed = True
        if self.choice.finish_reason is None and self.stream is not None:
            self.stream.cancel()  # the client went away or an error cut the stream
        now = time.monotonic()
        n = len(self.choice.token_ids)
        ttft = None if self.first_token_at is None else self.first_token_at - self.arrived
        tpot = None
        if n > 1 and self.first_token_at is not None and self.last_token_at is not None:
            tpot = (self.last_token_at - self.first_token_at) / (n - 1)
        self.core.finished(self.pool, self.choice.depth, self.batch.endpoint, ok, ttft, tpot, now - self.arrived)


async def start_runs(core: IngressState, batch: Batch) -> list[Run]:
    """Place the batch and start every prompt at once; APIError (400 / 429 / 503 ...) when it cannot
    start, and then none of it runs. The first delta of each is awaited here, so a replica refusing
    a request (its queue full, token ids outside its vocabulary, a prompt too long) still yields a
    status code."""
    arrived = time.monotonic()
    try:
        pools = core.table.place(len(batch.prompts), batch.depth)
    except Refusal as refusal:
        for pool in refusal.picked:
            core.arrived(pool)
        core.refused(refusal.kind)
        raise refusal_error(core, refusal) from None
    for pool in pools:
        core.arrived(pool)  # offered load: the request rate the controller remembers
    runs = [Run(core, batch, i, pool, arrived) for i, pool in enumerate(pools)]
    starts = [asyncio.ensure_future(run.start()) for run in runs]
    try:
        await asyncio.gather(*starts)
    except BaseException:
        for task in starts:
            task.cancel()
        await asyncio.gather(*starts, return_exceptions=True)
        for run, task in zip(runs, starts):
            if not run._closed:
                run.close(False)
        raise
    return runs


def refusal_error(core: IngressState, refusal: Refusal) -> APIError:
    """The answer to a batch that could not be placed: 429 only where waiting helps."""
    if refusal.kind == "queue_full":
        return APIError(429, refusal.message + "; retry later", code="queue_full", headers=core.retry_after())
    if refusal.kind == "no_pool":
        return APIError(503, refusal.message + "; retry shortly", code="no_pool_ready", headers=core.retry_after())
    if refusal.kind == "too_large":
        return APIError(400, refusal.message, param="prompt", code="batch_too_large")
    if refusal.kind == "depth_unpublished":
        return APIError(400, refusal.message + " (see /v1/models)", param="model", code="model_not_found")
    return APIError(400, refusal.message + " (see /v1/models)", param="model", code="depth_not_served")


def _api_error(core: IngressState, e: Exception, pool: str, param: str, request_id: str) -> APIError:
    if isinstance(e, QueueFullError):
        return APIError(429, f"pool {pool} is at its queue cap; retry later", code="queue_full",
                        headers=core.retry_after())
    if isinstance(e, BackPressureError):
        return APIError(503, f"pool {pool} is overloaded; retry later", code="overloaded", headers=core.retry_after())
    if isinstance(e, PromptTooLongError):
        return APIError(400, _replica_message(e), param="max_tokens", code="context_length_exceeded")
    if isinstance(e, DepthUnavailableError):
        return APIError(503, f"pool {pool} changed depth as the request arrived; retry", code="depth_changed",
                        headers=core.retry_after())
    if isinstance(e, DeploymentUnavailableError):
        return APIError(503, f"pool {pool} is unavailable; retry shortly", code="pool_unavailable",
                        headers=core.retry_after())
    if isinstance(e, REPLICA_GONE):
        log.warning("request %s: pool %s lost its replica %d times: %r", request_id, pool, MAX_ATTEMPTS, e)
        return APIError(503, f"pool {pool} lost its replicas while starting the request; retry shortly",
                        code="pool_unavailable", headers=core.retry_after())
    if isinstance(e, (ValueError, TypeError)):  # the engine's check of the prompt's token ids
        return APIError(400, f"{param}: {_replica_message(e)}", param=param, code="invalid_value")
    log.error("request %s: could not start on pool %s", request_id, pool, exc_info=e)
    return internal_error(request_id, f"pool {pool} failed to start the request", status=503, code="pool_error",
                          headers=core.retry_after())


def _replica_message(e: Exception) -> str:
    """The message of the exception the replica raised (its own words; Ray's wrapper reads as a remote
    traceback, which never reaches a client): the first line only."""
    cause = getattr(e, "cause", None)
    text = str(cause if isinstance(cause, BaseException) else e)
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__
