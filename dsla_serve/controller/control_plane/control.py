"""The policy actor's logic without Ray: gather metrics, decide, remember, describe.

    control = PolicyControl(policy, now)
    control.record(events)                      # from the ingress: Arrival and Observation messages
    targets = control.report(report, now)       # a ReplicaReport in, its pool's ReplicaTargets out
    decision = control.tick(now)                # every controller.interval_s
    control.routing(now)                        # the Routing the ingress samples pools by
    control.status(now)                         # the Status of /v1/dsla/status

`PolicyActor` (policy_actor.py) wraps this in a Ray Serve deployment and applies replica targets.
The invariant kept here: a replica is never told to serve deeper than the quality floor, and the
ingress never routes to a pool whose replicas report a depth beyond it (`decide` gates them).
"""

from __future__ import annotations

import logging
import time
from collections import deque

from ...model.storage import mask
from ...policies import Decision, Policy, decide, explain_floor, initial_state
from ...replicas.messages import ReplicaReport, ReplicaTargets
from ...trainer.progress import TrainerProgress
from ..messages import (Arrival, ControllerStatus, DecisionRecord, DepthRow, Observation, PoolStatus, QualityStatus,
                        ReplicaCounts, Routing, SLOStatus, Status)
from .artifact_view import ArtifactView, read_artifact
from .window import PoolWindow

log = logging.getLogger(__name__)

HISTORY = 50  # decisions kept for the status endpoint


def pool_resources(cluster: dict[str, float], reserved: dict[str, float] | None = None) -> dict[str, float]:
    """What the pools' replicas may use: the cluster's resources (`ray.cluster_resources()`) less what
    other actors of the app hold (`reserved`: the trainer's, while it runs), without Ray's per-node
    markers (`node:...`), memory and the object store (pools ask for neither)."""
    skip = {"memory", "object_store_memory"}
    out = {name: amount for name, amount in cluster.items() if not name.startswith("node:") and name not in skip}
    for name, amount in (reserved or {}).items():
        if name in out:
            out[name] = max(0.0, out[name] - amount)
    return out


class PolicyControl:
    """State of one application's controller. All times are `time.monotonic()` seconds passed in."""

    def __init__(self, policy: Policy, now: float, *, artifact_reader=read_artifact):
        self.policy = policy
        ctl = policy.controller
        self._read_artifact = artifact_reader
        self.artifact: ArtifactView = artifact_reader(policy.artifact_dir, None)
        self.state = initial_state(policy, self.artifact.quality)
        self.windows = {p.name: PoolWindow(p.name, ctl.window_s, stale_after_s=max(3 * ctl.interval_s, 5.0))
                        for p in policy.pools}
        self.decision: Decision | None = None
        self.history: deque[DecisionRecord] = deque(maxlen=HISTORY)
        self.trainer: TrainerProgress | None = None
        self.version = 0  # bumped whenever routing or targets change
        self.started = now
        self._wall_offset = time.time() - time.monotonic()

    # ------------------------------------------------------------------------------------------
    # inputs
    # ------------------------------------------------------------------------------------------
    def record(self, events: list[Arrival | Observation]) -> None:
        """The ingress's observations, in order. Events for unknown pools are ignored."""
        for event in events:
            window = self.windows.get(event.pool)
            if window is None:
                continue
            if isinstance(event, Arrival):
                window.arrive(event.at)
            else:
                window.finish(event)

    def report(self, report: ReplicaReport, now: float) -> ReplicaTargets:
        """A replica's report in; its targets out (KeyError for a pool the policy does not have)."""
        if report.pool not in self.windows:
            raise KeyError(f"unknown pool {report.pool!r}; pools: {', '.join(self.windows)}")
        self.windows[report.pool].report(report, now)
        return self.targets(report.pool)

    def targets(self, pool: str) -> ReplicaTargets:
        """`depth`: the pool's depth target (never beyond the floor); `artifact_depth`: how many layers are
        published, so that a replica holding fewer loads them first."""
        return ReplicaTargets(depth=self.state.depth_targets[pool], artifact_depth=self.artifact.quality.available_depth,
                              artifact=self.artifact.path, version=self.version)

    def pools_serving(self, now: float) -> bool:
        """Every pool that starts with replicas has one serving (reporting engine stats)."""
        return all(self.windows[p.name].live_replicas(now) for p in self.policy.pools if p.initial_replicas > 0)

    def set_trainer_progress(self, progress: TrainerProgress | None) -> None:
        self.trainer = progress

    # ------------------------------------------------------------------------------------------
    # the decision
    # ------------------------------------------------------------------------------------------
    def refresh_artifact(self) -> bool:
        """Re-read the artifact; True when the published depths or their quality changed."""
        before, error = self.artifact.quality, self.artifact.error
        self.artifact = self._read_artifact(self.policy.artifact_dir, self.artifact)
        if self.artifact.error and self.artifact.error != error:  # once per new problem, not every interval
            log.warning("artifact unreadable, keeping what was known: %s", self.artifact.error)
        elif error and not self.artifact.error:
            log.info("artifact readable again")
        return self.artifact.quality != before

    def tick(self, now: float, *, read_artifact: bool = True, resources: dict[str, float] | None = None) -> Decision:
        """One decision over the current window; remembered for routing and status. `read_artifact=False`:
        the caller refreshed the artifact itself (the policy actor does, in a worker thread). `resources`:
        what the pools' replicas may use in the cluster (`pool_resources`; None: unknown, unbounded)."""
        if read_artifact:
            self.refresh_artifact()
        metrics = [m for m in (w.metrics(now) for w in self.windows.values()) if m is not None]
        decision = decide(metrics, self.policy, self.state, self.artifact.quality, now, resources)
        moved = self.decision is None or decision.weights != self.decision.weights \
            or decision.depth_targets != self.decision.depth_targets \
            or decision.replica_targets != self.decision.replica_targets
        if moved:
            self.version += 1
        self.decision = decision
        self.state = decision.state
        self.history.append(DecisionRecord(
            time=self.wall(now), reason=decision.reason, changed=decision.changed, pressure=decision.pressure,
            floor=decision.floor, weights=dict(decision.weights), depth_targets=dict(decision.depth_targets),
            replica_targets=dict(decision.replica_targets)))
        return decision

    def wall(self, now: float) -> float:
        """Unix time of a monotonic `now` (for humans reading the status)."""
        return now + self._wall_offset

    # ------------------------------------------------------------------------------------------
    # outputs
    # ------------------------------------------------------------------------------------------
    def routing(self, now: float) -> Routing:
        """What the ingress routes by (see `Routing`)."""
        if self.decision is not None:
            weights, replicas = self.decision.weights, self.decision.replica_targets
        else:  # before the first tick: the initial split, unless a pool may be beyond the floor
            weights, replicas = self.state.weights, self.state.replica_targets
        floor, _ = explain_floor(self.policy, self.artifact.quality)
        return Routing(weights=dict(weights), replicas=dict(replicas), depths=dict(self.state.depth_targets),
                       version=self.version, stable_depth={name: w.stable_depth(now) for name, w in self.windows.items()},
                       floor=floor, published_depth=self.artifact.quality.available_depth,
                       running={name: len(w.live_replicas(now)) for name, w in self.windows.items()})

    def status(self, now: float, scaling_error: str | None = None) -> Status:
        """The /v1/dsla/status body, without its ingress section; `scaling_error`: the scaler's last failure."""
        policy, ctl = self.policy, self.policy.controller
        routing = self.routing(now)
        floor, why = explain_floor(policy, self.artifact.quality)
        signals = self.decision.signals if self.decision is not None else {}
        pools, met_all, total_all = [], 0, 0
        for pool in policy.pools:
            window = self.windows[pool.name]
            m = window.metrics(now)
            met, total = window.slo_attainment(now, policy.slo)
            met_all, total_all = met_all + met, total_all + total
            live = window.live_replicas(now)
            pools.append(PoolStatus(
                name=pool.name, configured_depth=pool.depth, depth_target=routing.depths[pool.name],
                serving_depths=sorted({r.engine.depth for r in live.values()}),
                # the deepest depth every live replica has loaded (new layers are loaded without restarts)
                loaded_depth=min((r.engine.max_depth for r in live.values()), default=None),
                started_depth=min((r.started_max_depth for r in live.values()), default=None),
                weight=routing.weights[pool.name],
                replicas=ReplicaCounts(running=len(live), target=routing.replicas[pool.name], min=pool.min_replicas,
                                       max=pool.max_replicas, ids=sorted(live)),
                queue_len=m.queue_len if m else None, running=m.running if m else None,
                ttft_p95_ms=m.ttft_p95_ms if m else None, tpot_p95_ms=m.tpot_p95_ms if m else None,
                e2e_p95_ms=m.e2e_p95_ms if m else None, cache_usage=m.cache_usage if m else None,
                requests_per_s=m.requests_per_s if m else 0.0, samples=m.num_samples if m else 0,
                slo_attainment=(met / total) if total else None,
                pressure=signals[pool.name].level if pool.name in signals else "unknown"))
        quality = policy.quality
        return Status(
            app=policy.name, model=policy.http.model_name, uptime_s=now - self.started, routing=routing.weights,
            routable=routing.routable, pools=pools,
            slo=SLOStatus(ttft_p95_ms=policy.slo.ttft_p95_ms, tpot_p95_ms=policy.slo.tpot_p95_ms,
                          e2e_p95_ms=policy.slo.e2e_p95_ms, window_s=ctl.window_s, met=met_all, finished=total_all,
                          attainment=(met_all / total_all) if total_all else None),
            quality=QualityStatus(
                floor=floor, floor_reason=why, max_ppl_ratio=quality.max_ppl_ratio if quality else None,
                max_depth=quality.max_depth if quality else None,
                available_depth=self.artifact.quality.available_depth, planned_depth=self.artifact.planned_depth,
                artifact=None if self.artifact.path is None else mask(self.artifact.path),
                artifact_error=self.artifact.error,
                depths=[DepthRow(depth=e.depth, layer=e.layer, ppl_ratio=e.ppl_ratio, allowed=e.depth <= floor,
                                 metrics={k: v for k, v in e.metrics.items() if k != "ppl_ratio"})
                        for e in self.artifact.layers]),
            trainer=self.trainer,
            controller=ControllerStatus(interval_s=ctl.interval_s, window_s=ctl.window_s, cooldown_s=ctl.cooldown_s,
                                        hysteresis=ctl.hysteresis,
                                        pressure=self.decision.pressure if self.decision else None,
                                        scaling_error=scaling_error),
            decisions=list(self.history)[::-1])
