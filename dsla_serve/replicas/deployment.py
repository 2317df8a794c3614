"""The Ray Serve wrapper of an `Engine`: one replica of a pool (the only module of `replicas` that imports Ray).

    deployment = serve.deployment(ReplicaDeployment).options(...).bind(spec, policy_actor)   # controller/app.py
    async for delta in handle.options(stream=True).generate.remote(GenerateRequest(...)): ...

- `generate(request)`: streams `StreamDelta`s (`deltas.py`); a client that goes away aborts its request.
  Raises QueueFullError past the engine's queue, ValueError for bad token ids or PromptTooLongError,
  DepthUnavailableError when the request names a depth this replica does not serve now, before the
  first delta.
- `detokenize(ids)`: the text of token ids (the ingress's /detokenize), checked against the vocabulary.
- A control loop sends `ReplicaReport`s to the policy actor about twice per controller interval and
  applies the `ReplicaTargets` it answers with: newly published layers are loaded with
  `Engine.refresh_artifact` (which attaches the artifact in place when a trainer created it after this
  replica started), and a new depth is reached with `Engine.set_depth` (which drains: nothing is
  dropped). Neither restarts anything, and pulling targets reaches every replica however many Serve runs.
- The artifact may be a local directory or an object store URI: every read of it runs in a worker thread
  (never on this replica's event loop or the engine's stepping thread), new layers are pulled into the
  node-local cache, and while the store cannot be reached the replica keeps serving the layers it holds.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

from ray import serve

from ..model.loading import load_tokenizer
from ..model.manifest import ArtifactUnavailable, has_manifest
from ..model.storage import mask
from .deltas import TokenTexts, stream_deltas
from .messages import GenerateRequest, ReplicaReport, ReplicaTargets

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class ReplicaSpec:
    """What the replicas of one pool serve, and how (the app builds it from the policy).

    model / tokenizer / dtype / max_model_len: as for `Engine` (tokenizer: a name `load_tokenizer` knows,
        None = the model's own). artifact: the artifact directory (it may not exist yet: a trainer creates it).
    max_num_seqs: concurrent requests; max_queue: requests its engine lets wait.
    gpu_memory_fraction: the share of the GPU the engine plans its cache in.
    report_every_s: seconds between reports to the policy actor.
    """

    pool: str
    model: str
    tokenizer: str | None
    artifact: str | None
    dtype: str | None
    max_model_len: int | None
    max_num_seqs: int
    max_queue: int
    gpu_memory_fraction: float
    report_every_s: float


def serve_replica_id() -> str:
    """This Serve replica's unique id; a random one outside a Serve replica (tests, plain actors)."""
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - no replica context here
        return uuid.uuid4().hex[:8]


class ReplicaDeployment:
    """The Serve deployment class of every pool (one deployment per pool, named `pool-<name>`).

    `policy_actor`: a handle with `targets(pool) -> ReplicaTargets` and `report(ReplicaReport) -> ReplicaTargets`.
    """

    async def __init__(self, spec: ReplicaSpec, policy_actor):
        self.spec = spec
        self.policy_actor = policy_actor
        self.replica_id = serve_replica_id()
        self._store_problem: str | None = None  # the store's last failure, logged once until it recovers
        targets = await self._ask(policy_actor.targets, spec.pool)
        self.engine = await asyncio.to_thread(self._build_engine, targets.depth if targets is not None else 0)
        self.started_max_depth = self.engine.max_depth  # layers loaded at start (later ones come by refresh)
        self.texts = TokenTexts(self.engine.tokenizer) if self.engine.tokenizer is not None else None
        self.engine.start()
        self._applying = asyncio.Lock()  # one change of artifact or depth at a time
        self._control = asyncio.get_running_loop().create_task(self._control_loop())
        log.info("pool %s replica %s serving at depth %d", spec.pool, self.replica_id, self.engine.depth)

    def _artifact_path(self) -> str | None:
        """The artifact, once it has a manifest (None before; and while its store cannot be reached)."""
        path = self.spec.artifact
        try:
            return path if path is not None and has_manifest(path) else None
        except ArtifactUnavailable as e:
            self._store_failed(e)
            return None

    def _store_failed(self, e: ArtifactUnavailable) -> None:
        if str(e) != self._store_problem:
            log.warning("pool %s: the artifact's store failed, serving the %d layers held: %s", self.spec.pool,
                        self.engine.max_depth if hasattr(self, "engine") else 0, e)
        self._store_problem = str(e)

    def _build_engine(self, depth: int):
        from .engine import Engine

        spec = self.spec
        engine = Engine(spec.model, tokenizer=None if spec.tokenizer is None else load_tokenizer(spec.tokenizer),
                        artifact=self._artifact_path(), dtype=spec.dtype, max_num_seqs=spec.max_num_seqs,
                        max_model_len=spec.max_model_len, max_queue=spec.max_queue,
                        seed=hash(self.replica_id) % (2**31), gpu_memory_fraction=spec.gpu_memory_fraction)
        engine.set_depth(min(depth, engine.max_depth), wait=True)
        log.info("pool %s replica %s warmed up in %.1f s", spec.pool, self.replica_id, engine.warm_up())
        return engine

    # ------------------------------------------------------------------------------------------
    async def generate(self, request: GenerateRequest):
        """Stream the deltas of one request (`deltas.py`)."""
        async for delta in stream_deltas(self.engine, request, self.texts):
            yield delta

    async def detokenize(self, token_ids: list[int]) -> str:
        """The text of `token_ids`; ValueError for ids outside the model's vocabulary."""
        ids = self.engine.check_token_ids(token_ids)
        if self.engine.tokenizer is None:
            raise ValueError("this replica's model has no tokenizer")
        return self.engine.tokenizer.decode(ids)

    def report(self) -> ReplicaReport:
        return ReplicaReport(pool=self.spec.pool, replica_id=self.replica_id,
                             started_max_depth=self.started_max_depth, engine=self.engine.stats())

    # ------------------------------------------------------------------------------------------
    async def _ask(self, method, argument) -> ReplicaTargets | None:
        try:
            return await method.remote(argument)
        except Exception as e:  # noqa: BLE001 - the policy actor restarting must not take the replica down
            log.warning("pool %s: the policy actor did not answer: %s", self.spec.pool, e)
            return None

    async def _control_loop(self) -> None:
        while True:
            try:
                targets = await self._ask(self.policy_actor.report, self.report())
                if targets is not None:
                    await self.apply(targets)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep serving; the next report retries
                log.exception("pool %s: applying targets failed", self.spec.pool)
            await asyncio.sleep(self.spec.report_every_s)

    async def apply(self, targets: ReplicaTargets) -> None:
        """Load newly published layers, then move to the depth target (drains, drops nothing)."""
        engine = self.engine
        async with self._applying:
            if targets.artifact_depth > engine.max_depth:
                await self._load_published(engine)
            depth = min(targets.depth, engine.max_depth)
            if depth != engine.depth and not engine.draining:
                log.info("pool %s: depth %d -> %d", self.spec.pool, engine.depth, depth)
                engine.set_depth(depth)

    async def _load_published(self, engine) -> None:
        """Load the layers published since the last read (a worker thread does the I/O)."""
        path = await asyncio.to_thread(self._artifact_path)
        if path is None:  # not created yet (the policy actor saw it first), or unreachable: the next report retries
            return
        try:
            new = await asyncio.to_thread(engine.refresh_artifact, path)
        except ArtifactUnavailable as e:
            self._store_failed(e)
            return
        if self._store_problem is not None:
            log.info("pool %s: the artifact's store answers again", self.spec.pool)
            self._store_problem = None
        if new:
            log.info("pool %s: loaded published layers %s of %s (depth %d available)", self.spec.pool, new,
                     mask(path), engine.max_depth)

    def check_health(self) -> None:
        if not self.engine.running_loop:
            raise RuntimeError(f"pool {self.spec.pool}: the engine loop is not running")

    def __del__(self):
        control = getattr(self, "_control", None)
        if control is not None:
            control.cancel()
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.stop()
