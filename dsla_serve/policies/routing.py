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


def tier_weights(policy: Policy, weights: Mapping[str, float], tiers: list[int], depth_targets: Mapping[str, int],
                 previous_targets: Mapping[str, int] | None = None) -> list[float]:
    """Traffic per tier of `depth_targets`, from per-pool weights given under `previous_targets`.

    Traffic is carried by depth, not by pool: the traffic at a depth that is still a tier stays at
    that depth, whichever pools serve it now, so re-targeting (the floor moving) never moves traffic
    into a newly available depth by itself. Traffic at a depth that is no longer a tier follows its
    pools to the shallowest depth they serve at now (the nearest to where it was: up to the new
    floor when it fell, one tier on when it rose). All of it on the shallowest tier if there is none.
    previous_targets: the depth targets `weights` were given under (default: `depth_targets`; a pool
        missing there counts at its new target).
    """
    previous = {p.name: (previous_targets or {}).get(p.name, depth_targets[p.name]) for p in policy.pools}
    out = [0.0] * len(tiers)
    for depth in sorted(set(previous.values())):
        traffic = sum(max(weights.get(name, 0.0), 0.0) for name, d in previous.items() if d == depth)
        if depth not in tiers:
            depth = min(depth_targets[name] for name, d in previous.items() if d == depth)
        out[tiers.index(depth)] += traffic
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


def _nearest_first(tiers: list[int], tier: int) -> list[int]:
    """`tier`, then the shallower tiers nearest first, then the deeper ones nearest first."""
    return [tier] + [t for t in reversed(tiers) if t < tier] + [t for t in tiers if t > tier]


def _fallback(policy: Policy, depth_targets: Mapping[str, int], order: list[int], allowed: set[str]) -> list[str]:
    """The `allowed` pools of the first tier in `order` that has any (none: [])."""
    for tier in order:
        pools = [p.name for p in policy.pools if depth_targets[p.name] == tier and p.name in allowed]
        if pools:
            return pools
    return []


def gate(policy: Policy, weights: Mapping[str, float], observed: Mapping[str, PoolMetrics],
         last_targets: Mapping[str, int], depth_targets: Mapping[str, int], replicas: Mapping[str, int],
         floor: int) -> tuple[dict[str, float], list[str]]:
    """Keep traffic off pools whose replicas still serve beyond the floor. Returns (weights, cut pools).

    A pool is routable when the depth it serves at (as reported; a pool without metrics is taken to
    serve at the depth it was last asked for, `last_targets`) is within the floor. A cut pool's share
    goes to the routable pools of its tier that carry traffic; when there are none, to the nearest tier
    with routable pools, shallower first (more accurate, and within the floor): preferring pools with
    a replica running (reported, or targeted when unreported), split by replica targets. Every weight
    is 0 only when no pool at all is routable.
    """
    serving = {p.name: observed[p.name].depth if p.name in observed
               else last_targets.get(p.name, depth_targets[p.name]) for p in policy.pools}
    running = {p.name: observed[p.name].replicas if p.name in observed else replicas[p.name] for p in policy.pools}
    routable = {name for name, depth in serving.items() if depth <= floor}
    ready = {name for name in routable if running[name] > 0}
    cut = [f"{name} (serving depth {serving[name]})" for name, w in weights.items() if w > 0 and name not in routable]
    tiers = tiers_of(depth_targets)
    out = {p.name: 0.0 for p in policy.pools}
    for tier in tiers:
        members = [p.name for p in policy.pools if depth_targets[p.name] == tier]
        traffic = sum(weights[name] for name in members)
        if traffic <= 0:
            continue
        carrying = [name for name in members if weights[name] > 0 and name in routable]
        if carrying:
            for name in carrying:
                out[name] += traffic * weights[name] / sum(weights[n] for n in carrying)
            continue
        receivers = _fallback(policy, depth_targets, _nearest_first(tiers, tier), ready) \
            or _fallback(policy, depth_targets, _nearest_first(tiers, tier), routable)
        capacity = sum(replicas[name] for name in receivers)
        for name in receivers:
            out[name] += traffic * (replicas[name] / capacity if capacity > 0 else 1.0 / len(receivers))
    total = sum(out.values())
    return {name: (w / total if total > EPS else 0.0) for name, w in out.items()}, cut
