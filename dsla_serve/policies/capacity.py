"""Replica targets: how many replicas each pool should run for the traffic it is about to get."""

from __future__ import annotations

import math
from collections.abc import Mapping

from .pressure import HIGH, PoolMetrics, PoolSignal
from .routing import EPS
from .schema import Policy, Pool

__all__ = ["clamp", "scale", "ensure_serving", "replica_resources", "overbooked", "bound_to_cluster"]


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


def replica_resources(pool: Pool) -> dict[str, float]:
    """What one replica of `pool` asks Ray for, under Ray's resource names (CPU, GPU, custom ones)."""
    out = {"CPU": pool.resources.num_cpus, "GPU": pool.resources.num_gpus, **pool.resources.custom}
    return {name: amount for name, amount in out.items() if amount > 0}


def overbooked(policy: Policy, replicas: Mapping[str, int], resources: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """Resources the replica targets ask for beyond what the cluster has: name -> (asked, available).
    A resource `resources` does not name is not bounded (unknown, not zero)."""
    asked: dict[str, float] = {}
    for pool in policy.pools:
        for name, amount in replica_resources(pool).items():
            asked[name] = asked.get(name, 0.0) + amount * replicas[pool.name]
    return {name: (amount, resources[name]) for name, amount in asked.items()
            if name in resources and amount > resources[name] + EPS}


def bound_to_cluster(policy: Policy, replicas: Mapping[str, int], weights: Mapping[str, float],
                     depth_targets: Mapping[str, int], resources: Mapping[str, float] | None
                     ) -> tuple[dict[str, int], str]:
    """Cut replica targets until the cluster can place them all; returns (targets, words for the reason,
    "" when nothing was cut).

    resources: what the pools' replicas may use in total (Ray's names, e.g. {"CPU": 2}; None: unknown,
    nothing is cut). One replica at a time comes off the pool with the least traffic weight per replica
    that uses an overbooked resource (ties: the shallower, whose requests cost more), never below its
    min_replicas, nor a pool's last replica while its tier has traffic and no other replica to carry it.
    So an idle pool (weight 0) gives its replicas up first, then growth the cluster cannot hold is
    undone. When the pools' minimums alone do not fit, what is left stays (and the words say so).
    """
    out = dict(replicas)
    if not resources:
        return out, ""
    before = dict(out)
    over = overbooked(policy, out, resources)
    while over:
        def removable(pool: Pool) -> bool:
            n = out[pool.name]
            if n - 1 < pool.min_replicas or not set(replica_resources(pool)) & set(over):
                return False
            if n - 1 >= 1:
                return True
            mates = [p for p in policy.pools if depth_targets[p.name] == depth_targets[pool.name]]
            tier_traffic = sum(weights.get(p.name, 0.0) for p in mates)
            return tier_traffic <= EPS or any(out[p.name] > 0 for p in mates if p.name != pool.name)

        candidates = [p for p in policy.pools if removable(p)]
        if not candidates:
            break
        cut = min(candidates, key=lambda p: (weights.get(p.name, 0.0) / out[p.name], depth_targets[p.name]))
        out[cut.name] -= 1
        over = overbooked(policy, out, resources)
    moves = [f"{name} {before[name]}->{out[name]}" for name in out if out[name] != before[name]]
    words = []
    if moves:
        have = ", ".join(f"{name} {amount:g}" for name, amount in sorted(resources.items())
                         if name in {r for p in policy.pools for r in replica_resources(p)})
        words.append(f"replica targets cut to fit the cluster ({have}): {', '.join(moves)}")
    if over:
        words.append("the pools' min_replicas ask for " + ", ".join(f"{name} {asked:g} of {have:g}"
                                                                     for name, (asked, have) in sorted(over.items()))
                     + ": some replicas cannot be placed")
    return out, "; ".join(words)
