"""The ingress's copy of the routing table, and its admission control.

    table = RoutingTable(pools, queue_cap, seed=0)
    table.update(routing)                       # the policy actor's `Routing`
    pools = table.place(3)                      # a pool for each of 3 prompts, admitted; or Refusal
    pools = table.place(1, depth=2)             # pinned to the pools serving depth 2 now
    ... table.release(pool)                     # when each request ends

Placement, per prompt: a pool drawn by the routing weights (seeded). If that pool has no free slot
(its in-flight requests reach running replicas x max_concurrent_requests; a replica target not yet
running, pending or starting, holds no slot), the request **spills over** to the deepest pool within
the quality floor that has a free slot (then the next shallower: a deeper depth serves a request for
less), so capacity never idles while requests wait. Only when no such pool has room does it wait in the drawn pool, and only when
`queue_cap` requests already wait (in flight beyond what the pools run at once, summed; counting at the
ingress covers requests queued in Serve's router as well as in the engines) is it refused. A batch is
placed whole or not at all. Refusals say whether waiting can help: a batch larger than every pool at
its max_replicas plus the queue could ever hold is `too_large` (400), a full queue `queue_full` (429).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from ..messages import Routing


@dataclass(frozen=True)
class PoolLimits:
    """What one pool can hold: requests per replica, and its most replicas."""

    concurrency: int
    max_replicas: int


class Refusal(Exception):
    """Requests that cannot be placed. kind: "no_pool" (nothing routable within the floor yet), "queue_full"
    (the queue is at its cap: retry later), "too_large" (more prompts than the server can ever hold at
    once), "depth_unpublished" / "depth_not_served" (a pinned depth nobody serves). `picked`: the pools
    the prompts were drawn to (the offered load)."""

    def __init__(self, kind: str, message: str, picked: list[str] | None = None):
        super().__init__(message)
        self.kind, self.message, self.picked = kind, message, picked or []


class RoutingTable:
    """Per-pool routing weights, replica counts, depths and in-flight requests (one ingress replica)."""

    def __init__(self, pools: Mapping[str, PoolLimits], queue_cap: int, seed: int = 0):
        """pools: name -> its limits (from the policy); queue_cap: the policy's http.queue_cap."""
        self.limits = dict(pools)
        self.queue_cap = queue_cap
        self.rng = random.Random(seed)
        names = list(pools)
        self.weights: dict[str, float] = {name: 0.0 for name in names}
        self.replicas: dict[str, int] = {name: 1 for name in names}
        self.running: dict[str, int | None] = {name: None for name in names}  # None: not told yet
        self.depths: dict[str, int] = {name: 0 for name in names}
        self.stable_depth: dict[str, int | None] = {name: None for name in names}
        self.floor = 0
        self.published_depth = 0
        self.version = -1
        self.in_flight: dict[str, int] = {name: 0 for name in names}

    def update(self, routing: Routing) -> None:
        """Take the policy actor's routing (unknown pools ignored, missing ones keep their values)."""
        for given, target in ((routing.weights, self.weights), (routing.replicas, self.replicas),
                              (routing.depths, self.depths), (routing.stable_depth, self.stable_depth),
                              (routing.running, self.running)):
            for name, value in given.items():
                if name in target:
                    target[name] = value
        self.floor, self.published_depth = routing.floor, routing.published_depth
        self.version = routing.version

    # ------------------------------------------------------------------------------------------
    @property
    def routable(self) -> bool:
        return sum(self.weights.values()) > 0

    def servable_depths(self) -> list[int]:
        """Depths a request may be pinned to now: served by every live replica of some pool, within the floor."""
        return sorted({d for d in self.stable_depth.values() if d is not None and d <= self.floor})

    def pick(self) -> str | None:
        """A pool drawn with probability proportional to its weight; None when every weight is 0."""
        total = sum(w for w in self.weights.values() if w > 0)
        if total <= 0:
            return None
        x = self.rng.random() * total
        last = None
        for name, weight in self.weights.items():
            if weight <= 0:
                continue
            last = name
            x -= weight
            if x < 0:
                return name
        return last  # rounding at the top end

    def serving_replicas(self, pool: str) -> int:
        """Replicas that take requests now: those running, at most the target (one being stopped is
        draining); the target only while the policy actor has not said how many run."""
        running = self.running[pool]
        target = max(self.replicas[pool], 0)
        return target if running is None else min(max(running, 0), target)

    def capacity(self, pool: str) -> int:
        return self.serving_replicas(pool) * self.limits[pool].concurrency

    def room(self, pool: str) -> int:
        """Free slots of a pool: requests it would start at once."""
        return self.capacity(pool) - self.in_flight[pool]

    def waiting(self) -> int:
        """Requests in flight beyond what the pools' replicas run at once (an estimate of the queue)."""
        return sum(max(0, self.in_flight[n] - self.capacity(n)) for n in self.in_flight)

    def emptied(self, pool: str) -> bool:
        """The policy is emptying `pool` (no replica target) and no replica of it reports any more: a request
        sent there and not yet started waits in Serve's router for a replica that will not come."""
        return self.replicas[pool] <= 0 and self.running[pool] == 0

    def within_floor(self) -> list[str]:
        """Pools whose live replicas all serve within the quality floor now: where requests may spill."""
        return [n for n, d in self.stable_depth.items() if d is not None and d <= self.floor]

    def _spill_to(self, pools: list[str]) -> str | None:
        """The deepest of `pools` with a free slot (by the depth its replicas serve now; ties: the most
        free slots), or None when none has one. Deeper is cheaper per request, and every one of `pools`
        is within the quality floor."""
        free = [n for n in pools if self.room(n) > 0]
        return max(free, key=lambda n: (self._depth(n), self.room(n)), default=None)

    def _depth(self, pool: str) -> int:
        """The depth a pool's replicas serve now (its target while they do not agree)."""
        stable = self.stable_depth[pool]
        return stable if stable is not None else self.depths[pool]

    def most_ever(self, pools: list[str]) -> int:
        """Requests these pools at their max_replicas and the queue can hold at once."""
        return sum(self.limits[n].max_replicas * self.limits[n].concurrency for n in pools) + self.queue_cap

    # ------------------------------------------------------------------------------------------
    def place(self, n: int, depth: int | None = None) -> list[str]:
        """Admit `n` requests (a batch: all or none) and return the pool of each; Refusal when they cannot
        be placed. `depth`: only pools whose replicas all serve exactly that depth now."""
        if depth is not None:
            candidates = [p for p, d in self.stable_depth.items() if d == depth and d <= self.floor]
            if not candidates:
                if depth > self.published_depth:
                    raise Refusal("depth_unpublished", f"depth {depth} is not published ({self.published_depth} "
                                  "layers are)")
                served = ", ".join(str(d) for d in self.servable_depths()) or "none"
                raise Refusal("depth_not_served", f"no pool serves depth {depth} now (depths served: {served})")
        else:
            candidates = list(self.limits)
        if n > self.most_ever(candidates):
            raise Refusal("too_large", f"{n} prompts in one request can never run at once here: the pools and the "
                          f"queue hold at most {self.most_ever(candidates)} (http.queue_cap {self.queue_cap} plus "
                          "max_replicas x max_concurrent_requests of each pool); send fewer per request")
        placed: list[str] = []
        picked: list[str] = []
        try:
            for _ in range(n):
                pool = self._draw(candidates if depth is not None else None)
                if pool is None:
                    raise Refusal("no_pool", "no pool serves within the quality floor yet (replicas are starting "
                                  "or changing depth)")
                picked.append(pool)
                if self.room(pool) <= 0:
                    spill = self._spill_to(self.within_floor() if depth is None else candidates)
                    if spill is not None:
                        pool = spill
                    elif self.waiting() >= self.queue_cap:
                        raise Refusal("queue_full", f"the server is at its queue cap ({self.queue_cap} requests "
                                      "waiting, http.queue_cap)")
                self.in_flight[pool] += 1
                placed.append(pool)
        except Refusal as refusal:
            for pool in placed:
                self.release(pool)
            refusal.picked = picked
            raise
        return placed

    def _draw(self, pinned: list[str] | None) -> str | None:
        if pinned is None:
            return self.pick()
        return max(pinned, key=lambda p: (self.room(p), -self.in_flight[p]))

    def move(self, pool: str) -> str:
        """A request on `pool` must start again (its replica died before it started): the deepest pool
        within the floor with room takes it over (`pool` itself when none has room). When `pool` has no
        replica target (the policy is emptying it, e.g. for a busy pool's pending replicas), the request
        never stays: Serve would hold it until a replica of `pool` starts, which may be never. It goes to
        the deepest other pool within the floor with room, else with a replica target (to wait there)."""
        others = [p for p in self.within_floor() if p != pool]
        spill = self._spill_to(others)
        if self.replicas[pool] <= 0:
            keeping = [p for p in others if self.replicas[p] > 0]
            spill = spill or max(keeping, key=lambda p: (self._depth(p), -self.in_flight[p]), default=None)
            if spill is None:
                return pool
        elif spill is None or self.room(pool) > 0:
            return pool
        self.release(pool)
        self.in_flight[spill] += 1
        return spill

    def release(self, pool: str) -> None:
        self.in_flight[pool] = max(0, self.in_flight[pool] - 1)
