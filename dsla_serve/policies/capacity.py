"""Replica targets: how many replicas each pool should run for the traffic it is about to get."""

from __future__ import annotations

import math
from collections.abc import Mapping

from .pressure import HIGH, PoolMetrics, PoolSignal
from .routing import EPS
from .schema import Policy, Pool

__all__ = ["clamp", "scale", "ensure_serving"]


def clamp(replicas: int, pool: Pool) -> int:
    """`replicas` within the pool's [min_replicas, max_replicas]."""
    return min(max(replicas, pool.min_replicas), pool.max_replicas)


def scale(policy: Policy, replicas: Mapping[str, int], before: Mapping[str, float], after: Mapping[str, float],
          observed: Mapping[str, PoolMetrics], signals: Mapping[str, PoolSignal], up: bool) -> dict[str, int]:
    """Replica targets when traffic moves from the split `before` to `after`.

    Demand is the requests in the system now (running + waiting, all pools) times the pool's new
    weight; a pool needs ceil(demand / max_concurrent_requests) replicas. Under pressure: at least
    that, and one more for a pool that carries traffic and is itself under pressure, while a pool
    left with no traffic and no request in flight sheds one (its resources may be what the deeper
    pools need). Pressure low: a pool gaining traffic gets what it needs; any other sheds one replica
    per decision, and only while the rest stay under (1 - hysteresis) of their concurrency.
    """
    band = 1.0 - policy.controller.hysteresis
    total = sum(m.ongoing for m in observed.values())
    out = {}
    for pool in policy.pools:
        name, current = pool.name, replicas[pool.name]
        demand = total * after[name]
        need = math.ceil(demand / pool.max_concurrent_requests - EPS)
        metrics = observed.get(name)
        drained = after[name] <= 0 and metrics is not None and metrics.ongoing == 0
        if up and drained:
            target = current - 1
        elif up:
            pressed = signals[name].level == HIGH and after[name] > 0
            target = max(need, current + 1) if pressed else max(need, current)
        elif after[name] > before[name] + EPS:
            target = max(need, current)
        else:
            keep = math.ceil(demand / (band * pool.max_concurrent_requests) - EPS)
            target = current - 1 if keep < current else current
        out[name] = clamp(target, pool)
    return out


def ensure_serving(policy: Policy, replicas: Mapping[str, int], weights: Mapping[str, float]) -> dict[str, int]:
    """Clamp to [min, max], and give a pool that is sent traffic at least one replica."""
    return {p.name: max(clamp(replicas[p.name], p), 1 if weights[p.name] > 0 else 0) for p in policy.pools}
