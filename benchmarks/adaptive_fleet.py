"""The replicas of benchmarks/adaptive_gpu.py: engines in a fixed number of places on one device, each
with the same cache budget, started and stopped as a policy's replica targets ask (no Ray).

    fleet = Fleet(EngineFactory(model, max_model_len=4224, budget_bytes=8 << 30), slots=2)
    fleet.arrange(policy, depths)                     # the policy's initial replicas (not measured)
    fleet.scale(policy, decision.replica_targets, decision.depth_targets)
    fleet.pick("fast")                                # the replica a request of pool `fast` goes to

- A replica is an `Engine` (replicas/engine.py) in one of `slots` places. The engines share one copy of
  the weights (one GPU; Serve replicas in separate processes would each hold their own); each has its
  own cache of `budget_bytes`, runner, CUDA graphs and queue (`cadence.replica_queue`), and serves as
  many sequences at once as the memory planner admits at its depth (`slots_at`: the pool's
  max_concurrent_requests).
- Serve's router: a request of a pool goes to its serving replica with the fewest ongoing requests.
- Scaling: a replica beyond its pool's target takes no new requests, finishes what it holds (Serve's
  graceful shutdown), then frees its place; a pool below its target gets a replica in a free place: a
  new `Engine` at the pool's depth target, built in the calling thread and timed. `events` records
  every start (with its seconds and the slots its plan gave), stop and release (`t` in seconds from
  `clock_zero`).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import torch

from dsla_serve.controller.cadence import replica_queue
from dsla_serve.policies import Policy
from dsla_serve.replicas import Engine
from dsla_serve.replicas.messages import ReplicaReport
from dsla_serve.replicas.model_source import cache_spec
from dsla_serve.replicas.planner import plan_memory


@dataclass
class EngineFactory:
    """How every replica's engine is built: over one in-memory model (converted to at least the deepest
    depth served), with the same context limit (tokens), cache budget (bytes) and prefill chunk (tokens)."""

    model: torch.nn.Module
    max_model_len: int
    budget_bytes: int
    max_num_seqs: int = 64
    prefill_chunk_tokens: int = 2048
    seed: int = 0
    builds: int = 0

    def slots_at(self, depth: int) -> int:
        """Sequences of max_model_len the memory plan admits at `depth` within the budget (at most
        `max_num_seqs`): what one replica at that depth runs at once."""
        spec = cache_spec(self.model, depth, self.max_model_len)
        return plan_memory(spec, depth, self.budget_bytes, self.max_num_seqs).max_seqs

    def build(self, depth: int, max_num_seqs: int, max_queue: int) -> Engine:
        self.builds += 1
        return Engine(self.model, depth=depth, max_model_len=self.max_model_len, max_num_seqs=max_num_seqs,
                      memory_budget_bytes=self.budget_bytes, max_queue=max_queue,
                      prefill_chunk_tokens=self.prefill_chunk_tokens, seed=self.seed + self.builds)


@dataclass(eq=False)
class Replica:
    """One engine serving a pool. `stopping`: beyond its pool's target, finishing what it holds;
    `ongoing`: requests sent to it and not ended (what Serve's router counts per replica)."""

    id: str
    pool: str
    engine: Engine
    started_max_depth: int
    stopping: bool = False
    ongoing: int = 0

    def load(self) -> int:
        return self.ongoing

    def report(self) -> ReplicaReport:
        return ReplicaReport(pool=self.pool, replica_id=self.id, started_max_depth=self.started_max_depth,
                             engine=self.engine.stats())


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Fleet:
    """The replicas on the device: at most `slots` engines at once (a stopping one keeps its place until
    it has finished its requests)."""

    def __init__(self, factory: EngineFactory, slots: int):
        self.factory = factory
        self.slots = slots
        self.replicas: list[Replica] = []
        self.events: list[dict] = []
        self.clock_zero = time.monotonic()
        self._ids = 0

    def _event(self, at: float, **fields) -> None:
        self.events.append({"t": round(at - self.clock_zero, 3), **fields})

    def serving(self, pool: str) -> list[Replica]:
        """The replicas of `pool` taking requests."""
        return [r for r in self.replicas if r.pool == pool and not r.stopping]

    def pick(self, pool: str) -> Replica | None:
        """The replica a new request of `pool` goes to: the serving one with the fewest requests (None: none)."""
        return min(self.serving(pool), key=Replica.load, default=None)

    def start(self, policy: Policy, pool: str, depth: int) -> Replica:
        """Build a replica of `pool` at `depth` in a free place and warm it up as a Serve replica does
        before it serves (`Engine.warm_up`); timed together."""
        if len(self.replicas) >= self.slots:
            raise RuntimeError(f"no free place: {self.slots} replicas already")
        t = time.monotonic()
        engine = self.factory.build(depth, policy.pool(pool).max_concurrent_requests, replica_queue(policy, pool))
        engine.warm_up()
        self._ids += 1
        replica = Replica(f"{pool}-{self._ids}", pool, engine, engine.max_depth)
        self.replicas.append(replica)
        self._event(t, event="start", replica=replica.id, depth=depth, seconds=round(time.monotonic() - t, 3),
                    slots=engine.plan.max_seqs)
        return replica

    def stop(self, replica: Replica) -> None:
        """Take a replica out of its pool: it finishes its requests, then `reap` frees its place."""
        replica.stopping = True
        self._event(time.monotonic(), event="stop", replica=replica.id, holding=replica.load())

    def reap(self) -> None:
        """Free the places of stopping replicas that have finished their requests."""
        done = [r for r in self.replicas if r.stopping and not r.engine.has_unfinished()]
        if not done:
            return
        t = time.monotonic()
        self.replicas = [r for r in self.replicas if r not in done]
        for r in done:
            r.engine = None  # the engine's cache goes with its last reference
        free_memory()
        for r in done:
            self._event(t, event="gone", replica=r.id, seconds=round(time.monotonic() - t, 3))

    def scale(self, policy: Policy, targets: dict[str, int], depths: dict[str, int]) -> None:
        """Move towards the replica targets: stop the least loaded replicas of a pool beyond its target,
        free finished places, start replicas of pools below theirs in free places (policy's pool order)."""
        for pool in policy.pools:
            serving = sorted(self.serving(pool.name), key=Replica.load)
            for replica in serving[:max(0, len(serving) - targets[pool.name])]:
                self.stop(replica)
        self.reap()
        for pool in policy.pools:
            while len(self.serving(pool.name)) < targets[pool.name] and len(self.replicas) < self.slots:
                self.start(policy, pool.name, depths[pool.name])

    def arrange(self, policy: Policy, depths: dict[str, int]) -> None:
        """Before a run, not measured: the policy's initial replicas. Engines already at a pool's depth
        and concurrency are kept (renamed into it), the others dropped; missing ones are built (`start`:
        warmed up, so the first run does not compile what later runs find compiled)."""
        wanted = [(p.name, depths[p.name]) for p in policy.pools for _ in range(p.initial_replicas)]
        if len(wanted) > self.slots:
            raise ValueError(f"the policy starts {len(wanted)} replicas on {self.slots} places")
        if any(r.engine.has_unfinished() for r in self.replicas):
            raise RuntimeError("arrange: a replica still has requests")
        spare, keep, build = list(self.replicas), [], []
        for pool, depth in wanted:
            concurrency = policy.pool(pool).max_concurrent_requests
            match = next((r for r in spare if r.engine.depth == depth and r.engine.max_num_seqs == concurrency), None)
            if match is None:
                build.append((pool, depth))
                continue
            spare.remove(match)
            self._ids += 1
            match.id, match.pool, match.stopping = f"{pool}-{self._ids}", pool, False
            keep.append(match)
        self.replicas = keep
        spare.clear()  # the engines not kept go with their last reference
        free_memory()
        for pool, depth in build:
            self.start(policy, pool, depth)
        self.events.clear()
        self.clock_zero = time.monotonic()
