"""The policy actor's logic without Ray: gather metrics, decide, remember, describe.

    control = PolicyControl(policy)
    control.record(events, now)                 # from the ingress: arrivals and finished requests
    targets = control.report(pool, replica, stats, now)   # from each replica; says its depth target
    decision = control.tick(now)                # every controller.interval_s
    control.routing()                           # what the ingress samples pools by
    control.status(now)                         # the /v1/dsla/status body

`PolicyActor` (policy_actor.py) wraps this in a Ray Serve deployment and applies replica targets.
The invariant kept here: a replica is never told to serve deeper than the quality floor, and the
ingress never routes to a pool whose replicas report a depth beyond it (`decide` gates them).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from ..policies import Decision, Policy, decide, explain_floor, initial_state
from .quality_source import ArtifactView, read_artifact
from .window import Observation, PoolWindow

log = logging.getLogger(__name__)

HISTORY = 50  # decisions kept for the status endpoint


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
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.trainer: dict[str, Any] | None = None
        self.version = 0  # bumped whenever routing or targets change
        self.started = now
        self._wall_offset = time.time() - time.monotonic()

    # ------------------------------------------------------------------------------------------
    # inputs
    # ------------------------------------------------------------------------------------------
    def record(self, events: list[dict[str, Any]]) -> None:
        """Ingress events: {"kind": "arrival", "pool", "at"} or {"kind": "finish", "pool", "at",
        "ttft_s", "tpot_s", "e2e_s", "ok"}. Events for unknown pools are ignored."""
        for e in events:
            window = self.windows.get(e.get("pool"))
            if window is None:
                continue
            if e["kind"] == "arrival":
                window.arrive(e["at"])
            elif e["kind"] == "finish":
                window.finish(Observation(pool=e["pool"], at=e["at"], ttft_s=e.get("ttft_s"),
                                          tpot_s=e.get("tpot_s"), e2e_s=e["e2e_s"], ok=e.get("ok", True)))

    def report(self, pool: str, replica_id: str, stats: dict[str, Any], now: float) -> dict[str, Any]:
        """A replica's engine stats in; its targets out: {"depth", "artifact_depth"}.

        `depth` is the pool's depth target (never beyond the floor); `artifact_depth` is how many layers
        are published, so a replica that loaded fewer refreshes its artifact first.
        """
        if pool not in self.windows:
            raise KeyError(f"unknown pool {pool!r}; pools: {', '.join(self.windows)}")
        self.windows[pool].report(replica_id, now, stats)
        return self.targets(pool)

    def targets(self, pool: str) -> dict[str, Any]:
        return {"depth": self.state.depth_targets[pool], "artifact_depth": self.artifact.quality.available_depth,
                "artifact": self.artifact.path, "version": self.version}

    def pools_serving(self, now: float) -> bool:
        """Every pool that starts with replicas has one serving (reporting engine stats)."""
        return all(any(not stats.get("starting") for stats in self.windows[p.name].live_replicas(now).values())
                   for p in self.policy.pools if p.initial_replicas > 0)

    def set_trainer_progress(self, progress: dict[str, Any] | None) -> None:
        self.trainer = progress

    # ------------------------------------------------------------------------------------------
    # the decision
    # ------------------------------------------------------------------------------------------
    def refresh_artifact(self) -> bool:
        """Re-read the artifact; True when the published depths or their quality changed."""
        before = self.artifact.quality
        self.artifact = self._read_artifact(self.policy.artifact_dir, self.artifact)
        if self.artifact.error:
            log.warning("artifact unreadable, keeping what was known: %s", self.artifact.error)
        return self.artifact.quality != before

    def tick(self, now: float) -> Decision:
        """One decision over the current window; remembered for routing and status."""
        self.refresh_artifact()
        metrics = [m for m in (w.metrics(now) for w in self.windows.values()) if m is not None]
        decision = decide(metrics, self.policy, self.state, self.artifact.quality, now)
        moved = self.decision is None or decision.weights != self.decision.weights \
            or decision.depth_targets != self.decision.depth_targets \
            or decision.replica_targets != self.decision.replica_targets
        if moved:
            self.version += 1
        self.decision = decision
        self.state = decision.state
        self.history.append({"time": self.wall(now), "reason": decision.reason, "changed": decision.changed,
                             "pressure": decision.pressure, "floor": decision.floor,
                             "weights": dict(decision.weights), "depth_targets": dict(decision.depth_targets),
                             "replica_targets": dict(decision.replica_targets)})
        return decision

    def wall(self, now: float) -> float:
        """Unix time of a monotonic `now` (for humans reading the status)."""
        return now + self._wall_offset

    # ------------------------------------------------------------------------------------------
    # outputs
    # ------------------------------------------------------------------------------------------
    def routing(self) -> dict[str, Any]:
        """What the ingress routes by: weights (sum 1, or all 0 = nothing routable yet), replicas and
        depth targets per pool, and a version that changes whenever any of them does."""
        if self.decision is not None:
            weights, replicas = self.decision.weights, self.decision.replica_targets
        else:  # before the first tick: the initial split, unless a pool may be beyond the floor
            weights, replicas = self.state.weights, self.state.replica_targets
        return {"weights": dict(weights), "replicas": dict(replicas), "depths": dict(self.state.depth_targets),
                "version": self.version}

    def status(self, now: float) -> dict[str, Any]:
        """The /v1/dsla/status body (plain JSON data)."""
        policy, ctl = self.policy, self.policy.controller
        routing = self.routing()
        floor, why = explain_floor(policy, self.artifact.quality)
        signals = self.decision.signals if self.decision is not None else {}
        pools, met_all, total_all = [], 0, 0
        for pool in policy.pools:
            window = self.windows[pool.name]
            m = window.metrics(now)
            met, total = window.slo_attainment(now, policy.slo)
            met_all, total_all = met_all + met, total_all + total
            live = window.live_replicas(now)
            pools.append({
                "name": pool.name, "configured_depth": pool.depth, "depth_target": routing["depths"][pool.name],
                "serving_depths": sorted({int(s.get("depth", 0)) for s in live.values()}),
                # the deepest depth every live replica has loaded (new layers are loaded without restarts)
                "loaded_depth": min((int(s["max_depth"]) for s in live.values() if "max_depth" in s), default=None),
                "started_depth": min((int(s["started_max_depth"]) for s in live.values() if "started_max_depth" in s),
                                     default=None),
                "weight": routing["weights"][pool.name],
                "replicas": {"running": len(live), "target": routing["replicas"][pool.name],
                             "min": pool.min_replicas, "max": pool.max_replicas, "ids": sorted(live)},
                "queue_len": m.queue_len if m else None, "running": m.running if m else None,
                "ttft_p95_ms": m.ttft_p95_ms if m else None, "tpot_p95_ms": m.tpot_p95_ms if m else None,
                "e2e_p95_ms": m.e2e_p95_ms if m else None, "cache_usage": m.cache_usage if m else None,
                "requests_per_s": m.requests_per_s if m else 0.0, "samples": m.num_samples if m else 0,
                "slo_attainment": (met / total) if total else None,
                "pressure": signals[pool.name].level if pool.name in signals else "unknown",
            })
        quality = policy.quality
        return {
            "app": policy.name,
            "model": policy.http.model_name,
            "uptime_s": now - self.started,
            "routing": routing["weights"],
            "routable": sum(routing["weights"].values()) > 0,
            "pools": pools,
            "slo": {"ttft_p95_ms": policy.slo.ttft_p95_ms, "tpot_p95_ms": policy.slo.tpot_p95_ms,
                    "e2e_p95_ms": policy.slo.e2e_p95_ms, "window_s": ctl.window_s,
                    "met": met_all, "finished": total_all,
                    "attainment": (met_all / total_all) if total_all else None},
            "quality": {
                "floor": floor, "floor_reason": why,
                "max_ppl_ratio": quality.max_ppl_ratio if quality else None,
                "max_depth": quality.max_depth if quality else None,
                "available_depth": self.artifact.quality.available_depth,
                "planned_depth": self.artifact.planned_depth,
                "artifact": self.artifact.path, "artifact_error": self.artifact.error,
                "depths": [{**row, "allowed": row["depth"] <= floor} for row in self.artifact.depths],
            },
            "trainer": self.trainer,
            "controller": {"interval_s": ctl.interval_s, "window_s": ctl.window_s, "cooldown_s": ctl.cooldown_s,
                           "hysteresis": ctl.hysteresis, "pressure": self.decision.pressure if self.decision else None},
            "decisions": list(self.history)[::-1],
        }
