"""The policy actor's decision, as a pure function of what it observed.

    state = initial_state(policy, depth_quality)
    every controller.interval_s:
        decision = decide(metrics, policy, state, depth_quality, now)
        route by decision.weights; reconfigure pools to decision.depth_targets;
        scale pools to decision.replica_targets; log decision.reason
        state = decision.state

No I/O and no clock (`now` is any monotonic time in seconds, passed in). The algorithm, in short
(docs/policies.md has it in full):

- Depth targets: each pool serves at min(its configured depth, the quality floor).
- Tiers: the distinct depth targets, shallow to deep. Traffic is a distribution over tiers, split
  inside a tier in proportion to replica targets. It is carried by depth across re-targeting: a
  rising floor makes deeper depths available but moves no traffic there; traffic at a depth that is
  no longer a tier follows its pools to the nearest depth they serve at now.
- Under pressure (any pool carrying traffic over an SLO target, its cache over max_cache_usage, or its
  queue over budget or growing), `traffic_step` of all traffic moves one tier deeper, taken from the
  shallowest tiers first, and pools under pressure or short of capacity get replicas. A pool left with
  no traffic and nothing in flight sheds a replica with such a change; when there is nothing else to
  change, only while a pool carrying traffic runs fewer replicas than its target (pending: starting,
  or not placeable), so that the idle pool's resources go to it.
- Replica targets never ask for more than the cluster's resources (`resources`, passed in): an idle
  pool gives its replicas up first, then growth the cluster cannot hold is undone.
- When every pool carrying traffic has been below (1 - hysteresis) of every target for `cooldown_s`,
  and the request rate is below (1 - hysteresis) of the rate that caused the change being undone,
  `traffic_step` moves one tier shallower, taken from the deepest tiers first, and idle capacity is
  released one replica at a time. If the rate has not fallen, the wait is several cooldowns, and
  grows each time such an undo has to be undone again (this is what stops flapping at steady load).
- At most one change per `cooldown_s`; with too few samples (and no gauge over target) nothing moves.
- A pool still reporting a depth beyond the floor gets no traffic until it reconfigures; its share
  goes to its tier mates, or else to the nearest tier within the floor (shallower first). Every
  weight is 0 only when no pool at all serves within the floor.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .capacity import bound_to_cluster, clamp, ensure_serving, scale
from .pressure import HIGH, LOW, NEUTRAL, UNKNOWN, PoolMetrics, PoolSignal, overall_level, pool_signal
from .quality import DepthQuality, explain_floor
from .routing import EPS, depth_targets_for, gate, shift, split, tier_weights, tiers_of
from .schema import ControllerSettings, Policy

__all__ = ["ControllerState", "Decision", "initial_state", "decide"]

WAIT_WITHOUT_RATE_DROP = 4  # cooldowns of low pressure before undoing a change although the rate has not fallen
MAX_PATIENCE = 16


@dataclass(frozen=True)
class ControllerState:
    """What the controller carries from one decision to the next.

    weights: intended routing weight per pool (before pools beyond the floor are cut), sum 1, given
        under `depth_targets` (the next decision reads the traffic per depth from the two together).
    depth_targets / replica_targets: what the previous decision asked for, per pool.
    last_change_at: `now` of the last traffic or replica change made because of load (None: never).
    low_since: `now` since which pressure has been low without a break (None: it is not low).
    floor: the quality floor at the previous decision (None before the first).
    queue_len: each pool's queue at the previous decision (to see a queue growing).
    rate_marks: total request rate at each change made under pressure not yet undone (a stack).
    patience: multiplier of the long wait before undoing a change while the rate has not fallen.
    undid_without_rate_drop: the last change undid one although the rate had not fallen.
    last_reason: the previous decision's reason.
    """

    weights: dict[str, float]
    depth_targets: dict[str, int]
    replica_targets: dict[str, int]
    last_change_at: float | None = None
    low_since: float | None = None
    floor: int | None = None
    queue_len: dict[str, int] = field(default_factory=dict)
    rate_marks: tuple[float, ...] = ()
    patience: int = 1
    undid_without_rate_drop: bool = False
    last_reason: str = ""


@dataclass(frozen=True)
class Decision:
    """What to apply now.

    weights: routing weight per pool, what the ingress samples by; sums to 1, or all 0 when no pool
        at all serves within the quality floor yet (see `routable`; answer 503 with Retry-After then).
        Differs from state.weights only while a pool is cut for serving beyond the floor.
    depth_targets: depth each pool must serve at (<= floor).
    replica_targets: replicas per pool, within [min_replicas, max_replicas], >= 1 where weight > 0.
    floor: the quality floor; pressure: high / neutral / low / unknown over the pools carrying traffic.
    signals: per pool pressure level and ratios (observed / target) behind it.
    changed: traffic or replicas moved because of load in this decision.
    reason: one line for the log and the status endpoint.
    state: pass it to the next `decide`.
    """

    weights: dict[str, float]
    depth_targets: dict[str, int]
    replica_targets: dict[str, int]
    floor: int
    pressure: str
    signals: dict[str, PoolSignal]
    changed: bool
    reason: str
    state: ControllerState

    @property
    def routable(self) -> bool:
        return sum(self.weights.values()) > 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (for logs and the status endpoint)."""
        return dataclasses.asdict(self)


def _index(metrics: Iterable[PoolMetrics] | Mapping[str, PoolMetrics], policy: Policy) -> dict[str, PoolMetrics]:
    items = metrics.values() if isinstance(metrics, Mapping) else metrics
    names = {p.name for p in policy.pools}
    out: dict[str, PoolMetrics] = {}
    for m in items:
        if m.name not in names:
            raise ValueError(f"metrics for unknown pool {m.name!r}; the policy's pools: {', '.join(sorted(names))}")
        if m.name in out:
            raise ValueError(f"two metrics records for pool {m.name!r}")
        out[m.name] = m
    return out


def initial_state(policy: Policy, depth_quality: DepthQuality | None = None) -> ControllerState:
    """Before any metrics: all traffic on the shallowest (most accurate) tier, initial replica counts."""
    floor, _ = explain_floor(policy, depth_quality)
    depth_targets = depth_targets_for(policy, floor)
    tiers = tiers_of(depth_targets)
    replicas = {p.name: p.initial_replicas for p in policy.pools}
    weights = split(policy, [1.0] + [0.0] * (len(tiers) - 1), tiers, depth_targets, replicas)
    return ControllerState(weights=weights, depth_targets=depth_targets,
                           replica_targets=ensure_serving(policy, replicas, weights), floor=floor)


def _percent(weights: Mapping[str, float], depth_targets: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {w:.0%} @d{depth_targets[name]}" for name, w in weights.items())


def _replica_moves(before: Mapping[str, int], after: Mapping[str, int]) -> str:
    moves = [f"{name} {before[name]}->{after[name]}" for name in after if after[name] != before[name]]
    return f"replicas {', '.join(moves)}" if moves else ""


def _cause(signals: Mapping[str, PoolSignal], carrying: list[str], level: str) -> str:
    pools = [name for name in carrying if signals[name].level == level]
    return "; ".join(f"{name}: {signals[name].worst}" for name in pools) or "no pool"


def _wait_to_move_back(state: ControllerState, ctl: ControllerSettings, rate: float) -> tuple[float, bool, str]:
    """(seconds of low pressure needed before undoing the last change made under pressure, whether
    that is the long wait because the request rate has not fallen, words for the reason).

    A change made under pressure is undone after `cooldown_s` of low pressure once the request rate
    is below (1 - hysteresis) of the rate that caused it; while it is not (the deeper split is calm
    only because it is deeper), after WAIT_WITHOUT_RATE_DROP * patience cooldowns. `patience`
    doubles each time such an undo is itself undone by pressure, so flapping dies out.
    """
    if not state.rate_marks:
        return ctl.cooldown_s, False, "no change made under pressure to undo"
    mark, band = state.rate_marks[-1], 1.0 - ctl.hysteresis
    if rate < band * mark:
        return ctl.cooldown_s, False, f"request rate {rate:.1f}/s below {band:.0%} of the {mark:.1f}/s that caused it"
    wait = WAIT_WITHOUT_RATE_DROP * state.patience * ctl.cooldown_s
    return wait, True, (f"request rate {rate:.1f}/s not below {band:.0%} of the {mark:.1f}/s that caused the last "
                        f"move, so waiting {WAIT_WITHOUT_RATE_DROP * state.patience}x cooldown")


def _remember(state: ControllerState, level: str, rate: float, waived: bool) -> dict[str, Any]:
    """State updates after a change: push the rate when acting under pressure, pop it when undoing."""
    if level == HIGH:
        patience = min(2 * state.patience, MAX_PATIENCE) if state.undid_without_rate_drop else state.patience
        return {"rate_marks": state.rate_marks + (rate,), "patience": patience, "undid_without_rate_drop": False}
    return {"rate_marks": state.rate_marks[:-1], "patience": state.patience if waived else 1,
            "undid_without_rate_drop": waived}


def decide(metrics: Iterable[PoolMetrics] | Mapping[str, PoolMetrics], policy: Policy, state: ControllerState,
           depth_quality: DepthQuality | None, now: float, resources: Mapping[str, float] | None = None) -> Decision:
    """One decision of the policy actor (see the module docstring and docs/policies.md).

    metrics: one record per pool (a pool without one counts as unknown, depth = its last target).
    depth_quality: what the artifact offers now; None = nothing published (depth 0 only).
    now: seconds on any monotonic clock, the same one for every call.
    resources: what the pools' replicas may use in the cluster, in total, under Ray's resource names
        (e.g. {"CPU": 2.0}); replica targets are cut to fit (`capacity.bound_to_cluster`). None, or a
        resource not named: not bounded.
    Raises ValueError for metrics naming a pool the policy does not have.
    """
    ctl = policy.controller
    observed = _index(metrics, policy)
    floor, why_floor = explain_floor(policy, depth_quality)
    depth_targets = depth_targets_for(policy, floor)
    tiers = tiers_of(depth_targets)
    notes = []
    if state.floor is not None and floor != state.floor:
        notes.append(f"quality floor {state.floor} -> {floor} ({why_floor})")
    retargeted = [f"{n} {state.depth_targets[n]}->{d}" for n, d in depth_targets.items()
                  if n in state.depth_targets and state.depth_targets[n] != d]
    if retargeted:
        notes.append(f"depth targets {', '.join(retargeted)}")

    replicas = {p.name: clamp(state.replica_targets.get(p.name, p.initial_replicas), p) for p in policy.pools}
    by_tier = tier_weights(policy, state.weights, tiers, depth_targets, state.depth_targets)
    current = split(policy, by_tier, tiers, depth_targets, replicas)
    carrying = [name for name, w in current.items() if w > 0]
    signals = {p.name: pool_signal(p, observed.get(p.name), policy, state.queue_len.get(p.name, 0))
               for p in policy.pools}
    level = overall_level(signals, carrying)
    rate = sum(m.requests_per_s for m in observed.values())
    low_since = (now if state.low_since is None else state.low_since) if level == LOW else None
    since_change = math.inf if state.last_change_at is None else now - state.last_change_at
    wait_back, waived, why_wait = _wait_to_move_back(state, ctl, rate)

    new_by_tier, new_replicas, acted, fit_note = by_tier, replicas, False, ""
    deciding = False
    if level == UNKNOWN:
        action = f"holding: too few samples ({_cause(signals, carrying, UNKNOWN)})"
    elif level == NEUTRAL:
        action = (f"holding: within the hysteresis band, between {1 - ctl.hysteresis:.0%} and 100% of target "
                  f"({_cause(signals, carrying, NEUTRAL)})")
    elif since_change < ctl.cooldown_s:
        action = (f"holding: pressure {level} ({_cause(signals, carrying, level)}) but in cooldown, "
                  f"{since_change:.0f} of {ctl.cooldown_s:.0f} s since the last change")
    elif level == LOW and now - low_since < wait_back:
        action = f"holding: pressure low for {now - low_since:.0f} of the {wait_back:.0f} s needed ({why_wait})"
    else:
        deciding, deeper = True, level == HIGH
        new_by_tier, moved = shift(by_tier, ctl.traffic_step, deeper)
        shifted = split(policy, new_by_tier, tiers, depth_targets, replicas)
        new_replicas, fit_note = bound_to_cluster(
            policy, scale(policy, replicas, current, shifted, observed, signals, up=deeper), shifted, depth_targets,
            resources)
        grew = moved > EPS or any(new_replicas[n] > replicas[n] for n in replicas)
        # pools carrying traffic with fewer replicas running than asked for (starting, or not placeable)
        pending = [f"{n} {observed[n].replicas} of {replicas[n]} running" for n in replicas
                   if shifted[n] > 0 and n in observed and observed[n].replicas < replicas[n]]
        if deeper and not grew and not pending:  # shedding drained pools alone is left for when pressure is low
            new_replicas = replicas

    weights = split(policy, new_by_tier, tiers, depth_targets, new_replicas)
    new_replicas = ensure_serving(policy, new_replicas, weights)
    # targets the cluster cannot place (held ones too: initial_replicas, or a cluster that shrank)
    new_replicas, fitted = bound_to_cluster(policy, new_replicas, weights, depth_targets, resources)
    weights = split(policy, new_by_tier, tiers, depth_targets, new_replicas)
    effective, cut = gate(policy, weights, observed, state.depth_targets, depth_targets, new_replicas, floor)
    new_replicas = ensure_serving(policy, new_replicas, effective)
    if deciding:  # what the decision does, from the targets it ends with (a pool still serving keeps a replica)
        parts = [f"moved {moved:.0%} of traffic {'deeper' if deeper else 'shallower'}"] if moved > EPS else []
        parts += [s for s in [_replica_moves(replicas, new_replicas)] if s]
        if deeper and not grew and parts:
            parts[-1] += f" (idle capacity shed while {', '.join(pending)})"
        idle = (f"nothing left to do: traffic is at the deepest allowed depth {tiers[-1]} and the pools under "
                "pressure are at max_replicas" if deeper else
                f"nothing to change: traffic is at the shallowest depth {tiers[0]} and replicas fit the load")
        cause = _cause(signals, carrying, level) if deeper else \
            f"every pool below {1 - ctl.hysteresis:.0%} of target for {now - low_since:.0f} s, {why_wait}"
        acted = bool(parts)
        action = f"pressure {level} ({cause}): " + ("; ".join(parts) if parts else idle)
    reason_parts = notes + [action] + [n for n in dict.fromkeys([fit_note, fitted]) if n]
    if cut:
        reason_parts.append(f"no traffic to {', '.join(cut)} beyond floor {floor} until it reconfigures")
    if not any(effective.values()):
        reason_parts.append("no pool serves within the quality floor yet")
    reason_parts.append(f"routing {_percent(effective, depth_targets)}")
    reason = "; ".join(reason_parts)

    memory = _remember(state, level, rate, waived) if acted else {}
    new_state = dataclasses.replace(
        state, weights=weights, depth_targets=depth_targets, replica_targets=new_replicas,
        last_change_at=now if acted else state.last_change_at, low_since=low_since, floor=floor,
        queue_len={name: m.queue_len for name, m in observed.items()}, last_reason=reason, **memory)
    return Decision(weights=effective, depth_targets=depth_targets, replica_targets=new_replicas, floor=floor,
                    pressure=level, signals=signals, changed=acted, reason=reason, state=new_state)
