"""What the policy actor knows about each pool over the controller's window.

Two sources, joined into one `PoolMetrics` per pool:

- request observations from the ingress (arrival; and when a request ends, its TTFT, TPOT and
  end-to-end latency as the client saw them): percentiles, SLO attainment and the request rate;
- replica reports (`ReplicaReport`: each replica's engine stats, every second or so): depth, queue,
  running requests, cache use. A replica that stopped reporting for `stale_after_s` no longer counts.

Pure Python (no Ray), with time passed in, so it is tested like the decision functions.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ...policies import SLO, PoolMetrics
from ...replicas.messages import ReplicaReport
from ...replicas.metrics import percentile
from ..messages import Observation


@dataclass(frozen=True)
class _Reported:
    at: float
    report: ReplicaReport


class PoolWindow:
    """Observations and replica reports of one pool, trimmed to the window."""

    def __init__(self, name: str, window_s: float, stale_after_s: float):
        self.name = name
        self.window_s = window_s
        self.stale_after_s = stale_after_s
        self.arrivals: deque[float] = deque()
        self.finished: deque[Observation] = deque()
        self.replicas: dict[str, _Reported] = {}

    def arrive(self, at: float) -> None:
        self.arrivals.append(at)

    def finish(self, obs: Observation) -> None:
        self.finished.append(obs)

    def report(self, report: ReplicaReport, at: float) -> None:
        self.replicas[report.replica_id] = _Reported(at, report)

    def trim(self, now: float) -> None:
        start = now - self.window_s
        while self.arrivals and self.arrivals[0] < start:
            self.arrivals.popleft()
        while self.finished and self.finished[0].at < start:
            self.finished.popleft()
        for rid in [r for r, rep in self.replicas.items() if now - rep.at > self.stale_after_s]:
            del self.replicas[rid]

    def live_replicas(self, now: float) -> dict[str, ReplicaReport]:
        self.trim(now)
        return {rid: rep.report for rid, rep in self.replicas.items()}

    def stable_depth(self, now: float) -> int | None:
        """The depth every live replica serves now, none of them draining (None: no report, or not one depth)."""
        engines = [r.engine for r in self.live_replicas(now).values()]
        depths = {e.depth for e in engines}
        if len(depths) != 1 or any(e.draining for e in engines):
            return None
        return depths.pop()

    def metrics(self, now: float) -> PoolMetrics | None:
        """The pool over the window; None while no replica of it has reported (unknown to `decide`)."""
        self.trim(now)
        if not self.replicas:
            return None
        stats = [rep.report.engine for rep in self.replicas.values()]
        ok = [o for o in self.finished if o.ok]
        ttft = [o.ttft_s * 1e3 for o in ok if o.ttft_s is not None]
        tpot = [o.tpot_s * 1e3 for o in ok if o.tpot_s is not None]
        e2e = [o.e2e_s * 1e3 for o in ok]
        return PoolMetrics(
            name=self.name,
            # the deepest depth any replica serves at (or is still draining from): what the floor gate needs
            depth=max(s.depth for s in stats),
            replicas=len(stats),
            queue_len=sum(s.waiting for s in stats),
            running=sum(s.running for s in stats),
            ttft_p95_ms=percentile(ttft, 95), tpot_p95_ms=percentile(tpot, 95), e2e_p95_ms=percentile(e2e, 95),
            # the fullest replica's share of cached tokens (slots are pre-sized, so tokens are what fills)
            cache_usage=max(s.cache_token_usage for s in stats),
            num_samples=len(ok),
            requests_per_s=len(self.arrivals) / self.window_s,
        )

    def slo_attainment(self, now: float, slo: SLO) -> tuple[int, int]:
        """(requests that met every target, requests finished) over the window."""
        self.trim(now)
        return sum(o.meets(slo) for o in self.finished), len(self.finished)

