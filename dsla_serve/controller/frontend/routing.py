"""The ingress's copy of the routing table, and its admission control.

    table = RoutingTable(pools, seed=0)
    table.update(routing)                       # the policy actor's `Routing`
    pool = table.pick()                         # weighted random, seeded; None = nothing routable
    table.admit(pool) ... table.release(pool)   # in-flight counts, for the queue cap

Admission: a request is refused (429) when it would wait (its pool's replicas are all busy) and the
requests waiting across pools, estimated as each pool's in-flight requests beyond what its replicas
run at once (replicas x max_concurrent_requests), already reach `queue_cap`. Counting at the ingress covers requests queued in Serve's router as well as
in the engines, so no request waits unaccounted.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from ..messages import Routing


class RoutingTable:
    """Per-pool routing weights, replica counts, depths and in-flight requests (one ingress replica)."""

    def __init__(self, concurrency: Mapping[str, int], queue_cap: int, seed: int = 0):
        """concurrency: pool -> max_concurrent_requests of one replica; queue_cap: the policy's http.queue_cap."""
        self.concurrency = dict(concurrency)
        self.queue_cap = queue_cap
        self.rng = random.Random(seed)
        self.weights: dict[str, float] = {name: 0.0 for name in concurrency}
        self.replicas: dict[str, int] = {name: 1 for name in concurrency}
        self.depths: dict[str, int] = {name: 0 for name in concurrency}
        self.version = -1
        self.in_flight: dict[str, int] = {name: 0 for name in concurrency}

    def update(self, routing: Routing) -> None:
        """Take the policy actor's routing (unknown pools ignored, missing ones keep their values)."""
        for given, target in ((routing.weights, self.weights), (routing.replicas, self.replicas),
                              (routing.depths, self.depths)):
            for name, value in given.items():
                if name in target:
                    target[name] = value
        self.version = routing.version

    @property
    def routable(self) -> bool:
        return sum(self.weights.values()) > 0

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

    def waiting(self) -> int:
        """Requests in flight beyond what the pools' replicas run at once (an estimate of the queue)."""
        return sum(max(0, self.in_flight[n] - max(self.replicas[n], 0) * self.concurrency[n]) for n in self.in_flight)

    def full(self, pool: str) -> bool:
        """A request sent to `pool` now would wait, and `queue_cap` requests already do."""
        would_wait = self.in_flight[pool] >= max(self.replicas[pool], 0) * self.concurrency[pool]
        return would_wait and self.waiting() >= self.queue_cap

    def admit(self, pool: str) -> None:
        self.in_flight[pool] += 1

    def release(self, pool: str) -> None:
        self.in_flight[pool] = max(0, self.in_flight[pool] - 1)
