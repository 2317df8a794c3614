"""The ingress's state, apart from HTTP: routing table, pool handles, limits, tokenizer, and the
observations it sends to the policy actor.

Two background tasks run on the replica's event loop: one refreshes the routing table from the
policy actor (`Routing`), one flushes request observations (`Arrival`, `Observation`: finished requests
with their latencies) to it. Both survive the policy actor restarting: the ingress keeps routing by the last table it got.
With `trainer.serve_prompts_sample`, a third writes the served-prompt sample (prompt_sample.py) next
to the artifact for the background trainer, every PROMPT_SAMPLE_WRITE_EVERY_S when it changed.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
import time
from typing import Any

from ...model.loading import load_tokenizer
from ...policies import Policy
from ..cadence import routing_every_s
from ..messages import Arrival, Observation
from .metrics import IngressMetrics
from .prompt_sample import ServedPromptSample, write_prompts_jsonl
from .prompting import Limits
from .routing import PoolLimits, RoutingTable

log = logging.getLogger("ray.serve")

FLUSH_EVERY_S = 0.25
PROMPT_SAMPLE_WRITE_EVERY_S = 5.0


class IngressState:
    def __init__(self, policy: Policy, policy_actor, pools: dict[str, Any], *, seed: int = 0):
        self.policy = policy
        self.policy_actor = policy_actor
        self.pools = pools
        self.metrics = IngressMetrics()
        self.model_names = {policy.http.model_name, policy.model.path}
        self.limits = Limits(policy.http.max_prompt_tokens, policy.http.max_tokens_limit, policy.model.max_model_len)
        self.max_body_bytes = policy.http.max_body_bytes
        self.table = RoutingTable({p.name: PoolLimits(p.max_concurrent_requests, p.max_replicas) for p in policy.pools},
                                  policy.http.queue_cap, seed=seed)
        self.api_key = read_api_key(policy)
        self.tokenizer = None
        self.events: list[Arrival | Observation] = []
        self.routing_every_s = routing_every_s(policy)
        self.routing_error: str | None = None
        self.prompt_sample = prompt_sample_of(policy, seed)
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Load the tokenizer, fetch the first routing table, start the background tasks."""
        model = self.policy.model
        self.tokenizer = await asyncio.to_thread(load_tokenizer, model.tokenizer or model.path)
        await self.refresh_routing()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._every(self.routing_every_s, self.refresh_routing)),
                       loop.create_task(self._every(FLUSH_EVERY_S, self.flush))]
        if self.prompt_sample is not None:
            self._tasks.append(loop.create_task(self._every(PROMPT_SAMPLE_WRITE_EVERY_S, self.write_prompt_sample)))

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _every(self, period: float, fn) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the policy actor may be restarting; keep the last table
                log.warning("ingress: %s failed: %s", getattr(fn, "__name__", fn), e)

    async def refresh_routing(self) -> None:
        try:
            self.table.update(await self.policy_actor.routing.remote())
            self.routing_error = None
        except Exception as e:  # noqa: BLE001 - shown without Ray's details (they name hosts and processes)
            self.routing_error = f"the policy actor did not answer ({type(e).__name__})"
            raise

    async def flush(self) -> None:
        if not self.events:
            return
        events, self.events = self.events, []
        await self.policy_actor.record.remote(events)

    def served_prompts(self, texts: list[str]) -> None:
        """Prompt texts being served (before generation); kept in the sample only when opted in."""
        if self.prompt_sample is not None:
            self.prompt_sample.offer(texts)

    async def write_prompt_sample(self) -> None:
        sample = self.prompt_sample
        if sample is None or not sample.dirty:
            return
        version, texts = sample.snapshot()
        await asyncio.to_thread(write_prompts_jsonl, sample.path, texts)
        sample.written(version)

    # ------------------------------------------------------------------------------------------
    # bookkeeping of runs
    # ------------------------------------------------------------------------------------------
    def retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(retry_after_s(self.policy.controller.interval_s))}

    def refused(self, reason: str) -> None:
        self.metrics.refused(reason)

    def arrived(self, pool: str) -> None:
        self.events.append(Arrival(pool=pool, at=time.monotonic()))

    def finished(self, pool: str, depth: int | None, endpoint: str, ok: bool, ttft_s: float | None,
                 tpot_s: float | None, e2e_s: float) -> None:
        """A started request ended (any way): release its slot, record it for the policy and Prometheus."""
        self.table.release(pool)
        obs = Observation(pool=pool, at=time.monotonic(), ttft_s=ttft_s, tpot_s=tpot_s, e2e_s=e2e_s, ok=ok)
        self.events.append(obs)
        self.metrics.finished(pool, depth, endpoint, "ok" if ok else "error", ttft_s, tpot_s, e2e_s,
                              obs.missed_targets(self.policy.slo))

    # ------------------------------------------------------------------------------------------
    def authorized(self, header: str | None) -> bool:
        """`Authorization: Bearer <key>` matches the configured key (always true without one)."""
        if self.api_key is None:
            return True
        if not header or header[:7].lower() != "bearer ":  # the scheme name is case-insensitive (RFC 9110)
            return False
        return hmac.compare_digest(header[len("Bearer "):].strip().encode(), self.api_key.encode())


def prompt_sample_of(policy: Policy, seed: int) -> ServedPromptSample | None:
    """The served-prompt sample when the policy opts in (trainer.serve_prompts_sample), else None."""
    trainer = policy.trainer
    if trainer is None or not trainer.serve_prompts_sample:
        return None
    return ServedPromptSample(policy.artifact_dir, trainer.serve_prompts_max, seed)


def read_api_key(policy: Policy) -> str | None:
    """The API key from the environment variable the policy names; an error if it is named but unset."""
    name = policy.http.api_key_env
    if name is None:
        return None
    value = os.environ.get(name, "")
    if not value:
        raise RuntimeError(f"http.api_key_env is {name!r} but the environment variable {name} is not set (or "
                           "empty) where the ingress runs: set it, or remove api_key_env to serve without a key")
    return value


def retry_after_s(interval_s: float) -> int:
    """Seconds a refused client should wait: one controller interval (when things can change), >= 1."""
    return max(1, math.ceil(interval_s))
