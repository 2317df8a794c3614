"""Traffic as a distribution over depth tiers: building it, moving it, and cutting unsafe pools.

A tier is one distinct depth target. Pools at the same depth target share their tier's traffic in
proportion to their replica targets. Weights are plain dicts pool name -> fraction.
"""

from __future__ import annotations

from collections.abc import Mapping

from .pressure import PoolMetrics
from .schema import Policy

__all__ = ["depth_targets_for", "tiers_of", "tier_weights", "split", "shift", "gate"]

EPS = 1e-9


def depth_targets_for(policy: Policy, floor: int) -> dict[str, int]:
    """Each pool serves at its configured depth, or at the floor while the floor is shallower."""
    return {pool.name: min(pool.depth, floor) for pool in policy.pools}


def tiers_of(depth_targets: Mapping[str, int]) -> list[int]:
    """The distinct depth targets, shallow (accurate) to deep (fast)."""
    return sorted(set(depth_targets.values()))


def tier_weights(policy: Policy, weights: Mapping[str, float], tiers: list[int],
                 depth_targets: Mapping[str, int]) -> list[float]:
    """Traffic per tier from per-pool weights; all of it on the shallowest tier if there is none."""
    out = [0.0] * len(tiers)
    for pool in policy.pools:
        out[tiers.index(depth_targets[pool.name])] += max(weights.get(pool.name, 0.0), 0.0)
    total = sum(out)
    if total <= EPS:
        return [1.0] + [0.0] * (len(tiers) - 1)
    return [w / total for w in out]


def split(policy: Policy, by_tier: list[float], tiers: list[int], depth_targets: Mapping[str, int],
          replicas: Mapping[str, int]) -> dict[str, float]:
    """Per-pool weights: each tier's share split in proportion to replica targets (equally if all 0)."""
    weights = {}
    for pool in policy.pools:
        tier = tiers.index(depth_targets[pool.name])
        mates = [p.name for p in policy.pools if depth_targets[p.name] == tiers[tier]]
        capacity = sum(replicas[name] for name in mates)
        share = replicas[pool.name] / capacity if capacity > 0 else 1.0 / len(mates)
        weight = by_tier[tier] * share
        weights[pool.name] = weight if weight > EPS else 0.0
    return weights


def shift(by_tier: list[float], amount: float, deeper: bool) -> tuple[list[float], float]:
    """Move `amount` of traffic one tier deeper (from the shallowest first) or shallower (from the
    deepest first). Returns the new weights and how much moved (less when already at the end)."""
    w = list(by_tier)
    left = amount
    steps = range(len(w) - 1) if deeper else range(len(w) - 1, 0, -1)
    for i in steps:
        take = min(w[i], left)
        w[i] -= take
        w[i + 1 if deeper else i - 1] += take
        left -= take
        if left <= EPS:
            break
    return [x if x > EPS else 0.0 for x in w], amount - max(left, 0.0)


def gate(policy: Policy, weights: Mapping[str, float], observed: Mapping[str, PoolMetrics],
         last_targets: Mapping[str, int], floor: int) -> tuple[dict[str, float], list[str]]:
    """Zero the weight of pools whose replicas still serve beyond the floor; renormalise the rest.

    A pool without metrics is taken to serve at the depth it was last asked for."""
    gated, cut = dict(weights), []
    for pool in policy.pools:
        metrics = observed.get(pool.name)
        depth = metrics.depth if metrics is not None else last_targets.get(pool.name, min(pool.depth, floor))
        if depth > floor and gated[pool.name] > 0:
            gated[pool.name] = 0.0
            cut.append(f"{pool.name} (serving depth {depth})")
    total = sum(gated.values())
    return {name: (w / total if total > EPS else 0.0) for name, w in gated.items()}, cut
