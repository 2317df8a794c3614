"""The ingress's state, apart from HTTP: routing table, pool handles, limits, tokenizer, and the
observations it sends to the policy actor.

Two background tasks run on the replica's event loop: one refreshes the routing table from the
policy actor, one flushes request observations (arrivals, finished requests with their latencies) to
it. Both survive the policy actor restarting: the ingress keeps routing by the last table it got.
With `trainer.serve_prompts_sample`, a third writes the served-prompt sample (prompt_sample.py) next
to the artifact for the background trainer, every PROMPT_SAMPLE_WRITE_EVERY_S when it changed.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from typing import Any

from ..policies import Policy
from .prompt_sample import ServedPromptSample, write_prompts_jsonl
from .prompting import Limits, load_tokenizer
from .routing import RoutingTable
from .runs import retry_after_s
from .window import Observation, meets_slo

log = logging.getLogger("ray.serve")

FLUSH_EVERY_S = 0.25
PROMPT_SAMPLE_WRITE_EVERY_S = 5.0


class IngressCore:
    def __init__(self, policy: Policy, policy_actor, pools: dict[str, Any], *, seed: int = 0, metrics=None):
        self.policy = policy
        self.policy_actor = policy_actor
        self.pools = pools
        self.metrics = metrics
        self.model_names = {policy.http.model_name, policy.model.path}
        self.limits = Limits(policy.http.max_prompt_tokens, policy.http.max_tokens_limit, policy.model.max_model_len)
        self.table = RoutingTable({p.name: p.max_concurrent_requests for p in policy.pools},
                                  policy.http.queue_cap, seed=seed)
        self.api_key = read_api_key(policy)
        self.tokenizer = None
        self.events: list[dict[str, Any]] = []
        self.routing_every_s = min(max(policy.controller.interval_s / 2, 0.1), 1.0)
        self.routing_error: str | None = None
        self.prompt_sample = prompt_sample_of(policy, seed)
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Load the tokenizer, fetch the first routing table, start the background tasks."""
        model = self.policy.model
        self.tokenizer = await asyncio.to_thread(load_tokenizer, model.path, model.tokenizer)
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
        except Exception as e:  # noqa: BLE001
            self.routing_error = f"{type(e).__name__}: {e}"
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
    # bookkeeping called by runs
    # ------------------------------------------------------------------------------------------
    def retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(retry_after_s(self.policy.controller.interval_s))}

    def refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.refused(reason)

    def arrived(self, pool: str) -> None:
        self.events.append({"kind": "arrival", "pool": pool, "at": time.monotonic()})

    def finished(self, pool: str, depth: int | None, endpoint: str, ok: bool, ttft_s: float | None,
                 tpot_s: float | None, e2e_s: float) -> None:
        """A started request ended (any way): release its slot, record it for the policy and Prometheus."""
        self.table.release(pool)
        obs = Observation(pool=pool, at=time.monotonic(), ttft_s=ttft_s, tpot_s=tpot_s, e2e_s=e2e_s, ok=ok)
        self.events.append({"kind": "finish", "pool": pool, "at": obs.at, "ttft_s": ttft_s, "tpot_s": tpot_s,
                            "e2e_s": e2e_s, "ok": ok})
        if self.metrics is not None:
            self.metrics.finished(pool, depth, endpoint, "ok" if ok else "error", ttft_s, tpot_s, e2e_s,
                                  violated_targets(obs, self.policy))

    def start_failed(self, pool: str, endpoint: str, code: str) -> None:
        if self.metrics is not None:
            self.metrics.refused(code)

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


def violated_targets(obs: Observation, policy: Policy) -> list[str]:
    """Which SLO targets a finished request missed (names as in the policy)."""
    if meets_slo(obs, policy.slo):
        return []
    slo, out = policy.slo, []
    if not obs.ok:
        return ["failed"]
    if obs.ttft_s is not None and obs.ttft_s * 1e3 > slo.ttft_p95_ms:
        out.append("ttft_p95_ms")
    if obs.tpot_s is not None and obs.tpot_s * 1e3 > slo.tpot_p95_ms:
        out.append("tpot_p95_ms")
    if slo.e2e_p95_ms is not None and obs.e2e_s * 1e3 > slo.e2e_p95_ms:
        out.append("e2e_p95_ms")
    return out
