"""A pool replica: one engine serving the policy's model at its pool's depth target.

Each replica reports its engine stats to the policy actor about twice per controller interval and
gets its targets back in the reply: the depth to serve at (never beyond the quality floor) and how
many layers the artifact has published. It loads newly published layers with
`Engine.refresh_artifact` (which also attaches the artifact in place when the trainer created it after
this replica started) and changes depth with `Engine.set_depth` (which drains: no request is
dropped), so neither a new layer nor a depth change restarts anything. Pulling targets this way
reaches every replica of a pool, however many Serve runs.

The ingress calls `generate` with prompt token ids and SamplingParams keyword arguments; it streams
the deltas of `replicas/deltas.py` (what `formatting.py` turns into responses), as the plain engine
deployment `replicas/deployment.py` does.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from ..policies import Policy
from ..replicas.deltas import stream_deltas
from ..replicas.deployment import serve_replica_id

log = logging.getLogger("ray.serve")

MANIFEST_NAME = "manifest.json"
GPU_MEMORY_FRACTION = 0.9


def replica_queue(policy: Policy, pool_name: str) -> int:
    """Requests one replica's engine lets wait: the queue cap, plus one batch of slack.

    The ingress enforces `http.queue_cap` across pools (it knows every request in flight); the engine's
    own cap is a backstop. The slack covers the moment after a batch finishes, when the ingress has
    already released those requests and sends new ones while the engine has not yet admitted its
    waiting ones into the freed slots.
    """
    return policy.http.queue_cap + policy.pool(pool_name).max_concurrent_requests


class PoolReplica:
    """The Serve deployment class of every pool (one deployment per pool, named `pool-<name>`)."""

    async def __init__(self, policy: dict, pool: str, policy_actor):
        self.policy = Policy.model_validate(policy)
        self.pool = self.policy.pool(pool)
        self.policy_actor = policy_actor
        self.replica_id = serve_replica_id()
        ctl = self.policy.controller
        self.report_every_s = min(max(ctl.interval_s / 2, 0.1), 2.0)
        targets = await self._report({"depth": 0, "starting": True})
        depth = targets["depth"] if targets is not None else 0
        self.engine = await asyncio.to_thread(self._build_engine, depth)
        self.started_max_depth = self.engine.max_depth  # layers loaded at start (later ones come by refresh)
        self.engine.start()
        self._applying = asyncio.Lock()  # one change of artifact or depth at a time
        self._control = asyncio.get_running_loop().create_task(self._control_loop())
        log.info("pool %s replica %s serving at depth %d", pool, self.replica_id, self.engine.depth)

    # ------------------------------------------------------------------------------------------
    def _artifact_path(self) -> str | None:
        path = self.policy.artifact_dir
        return path if path is not None and os.path.exists(os.path.join(path, MANIFEST_NAME)) else None

    def _build_engine(self, depth: int):
        from ..replicas import Engine

        model = self.policy.model
        gpus = self.pool.resources.num_gpus
        engine = Engine(model.path, tokenizer=None if model.tokenizer is None else _tokenizer(model.tokenizer),
                        artifact=self._artifact_path(), dtype=None if model.dtype == "auto" else model.dtype,
                        max_num_seqs=self.pool.max_concurrent_requests, max_model_len=model.max_model_len,
                        max_queue=replica_queue(self.policy, self.pool.name), seed=hash(self.replica_id) % (2**31),
                        # a replica on a fraction of a GPU plans its cache in its share of the memory
                        gpu_memory_fraction=GPU_MEMORY_FRACTION * (gpus if 0 < gpus < 1 else 1.0))
        engine.set_depth(min(depth, engine.max_depth), wait=True)
        return engine

    # ------------------------------------------------------------------------------------------
    async def generate(self, prompt_ids: list[int], params: dict[str, Any], request_id: str):
        """Stream the deltas of one request (`replicas/deltas.py`). Raises QueueFullError at the cap."""
        async for delta in stream_deltas(self.engine, prompt_ids, params, request_id):
            yield delta

    def stats(self) -> dict[str, Any]:
        stats = self.engine.stats()
        stats.pop("plan", None)
        return {**stats, "pool": self.pool.name, "replica": self.replica_id, "started_max_depth": self.started_max_depth}

    # ------------------------------------------------------------------------------------------
    async def _report(self, stats: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return await self.policy_actor.report.remote(self.pool.name, self.replica_id, stats)
        except Exception as e:  # noqa: BLE001 - the policy actor restarting must not take the replica down
            log.warning("pool %s: report to the policy actor failed: %s", self.pool.name, e)
            return None

    async def _control_loop(self) -> None:
        while True:
            try:
                targets = await self._report(self.stats())
                if targets is not None:
                    await self._apply(targets)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep serving; the next report retries
                log.exception("pool %s: applying targets failed", self.pool.name)
            await asyncio.sleep(self.report_every_s)

    async def _apply(self, targets: dict[str, Any]) -> None:
        """Load newly published layers, then move to the depth target (drains, drops nothing)."""
        engine = self.engine
        async with self._applying:
            if targets["artifact_depth"] > engine.max_depth:
                path = self._artifact_path()
                if path is None:  # not created yet (the policy actor saw it first): the next report retries
                    return
                # attaches the artifact in place if this replica started before the trainer created it
                new = await asyncio.to_thread(engine.refresh_artifact, path)
                if new:
                    log.info("pool %s: loaded published layers %s of %s (depth %d available)", self.pool.name,
                             new, path, engine.max_depth)
            depth = min(targets["depth"], engine.max_depth)
            if depth != engine.depth and not engine.draining:
                log.info("pool %s: depth %d -> %d", self.pool.name, engine.depth, depth)
                engine.set_depth(depth)

    def check_health(self) -> None:
        if not self.engine.running_loop:
            raise RuntimeError(f"pool {self.pool.name}: the engine loop is not running")

    def __del__(self):
        control = getattr(self, "_control", None)
        if control is not None:
            control.cancel()
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.stop()


def _tokenizer(path: str):
    from .prompting import load_tokenizer

    return load_tokenizer(path)
