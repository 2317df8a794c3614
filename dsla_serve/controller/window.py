"""What the policy actor knows about each pool over the controller's window.

Two sources, joined into one `PoolMetrics` per pool:

- request observations from the ingress (arrival; and when a request ends, its TTFT, TPOT and
  end-to-end latency as the client saw them): percentiles, SLO attainment and the request rate;
- replica reports (each replica's engine stats, every second or so): depth, queue, running
  requests, cache use. A replica that stopped reporting for `stale_after_s` no longer counts.

Pure Python (no Ray), with time passed in, so it is tested like the decision functions.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from ..policies import SLO, PoolMetrics
from ..replicas.metrics import percentile


@dataclass(frozen=True)
class Observation:
    """One finished request as the ingress saw it. Times in seconds; tpot None for one token or less."""

    pool: str
    at: float
    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float
    ok: bool = True


@dataclass(frozen=True)
class ReplicaReport:
    at: float
    stats: dict[str, Any]


def meets_slo(obs: Observation, slo: SLO) -> bool:
    """Whether a finished request met every latency target (a failed request never does)."""
    if not obs.ok:
        return False
    if obs.ttft_s is not None and obs.ttft_s * 1e3 > slo.ttft_p95_ms:
        return False
    if obs.tpot_s is not None and obs.tpot_s * 1e3 > slo.tpot_p95_ms:
        return False
    return slo.e2e_p95_ms is None or obs.e2e_s * 1e3 <= slo.e2e_p95_ms


class PoolWindow:
    """Observations and replica reports of one pool, trimmed to the window."""

    def __init__(self, name: str, window_s: float, stale_after_s: float):
        self.name = name
        self.window_s = window_s
        self.stale_after_s = stale_after_s
        self.arrivals: deque[float] = deque()
        self.finished: deque[Observation] = deque()
        self.replicas: dict[str, ReplicaReport] = {}

    def arrive(self, at: float) -> None:
        self.arrivals.append(at)

    def finish(self, obs: Observation) -> None:
        self.finished.append(obs)

    def report(self, replica_id: str, at: float, stats: dict[str, Any]) -> None:
        self.replicas[replica_id] = ReplicaReport(at, dict(stats))

    def trim(self, now: float) -> None:
        start = now - self.window_s
        while self.arrivals and self.arrivals[0] < start:
            self.arrivals.popleft()
        while self.finished and self.finished[0].at < start:
            self.finished.popleft()
        for rid in [r for r, rep in self.replicas.items() if now - rep.at > self.stale_after_s]:
            del self.replicas[rid]

    def live_replicas(self, now: float) -> dict[str, dict[str, Any]]:
        self.trim(now)
        return {rid: rep.stats for rid, rep in self.replicas.items()}

    def metrics(self, now: float) -> PoolMetrics | None:
        """The pool over the window; None while no replica of it has reported (unknown to `decide`)."""
        self.trim(now)
        if not self.replicas:
            return None
        stats = [rep.stats for rep in self.replicas.values()]
        ok = [o for o in self.finished if o.ok]
        ttft = [o.ttft_s * 1e3 for o in ok if o.ttft_s is not None]
        tpot = [o.tpot_s * 1e3 for o in ok if o.tpot_s is not None]
        e2e = [o.e2e_s * 1e3 for o in ok]
        usage = [_cache_usage(s) for s in stats]
        usage = [u for u in usage if u is not None]
        return PoolMetrics(
            name=self.name,
            # the deepest depth any replica serves at (or is still draining from): what the floor gate needs
            depth=max(int(s.get("depth", 0)) for s in stats),
            replicas=len(stats),
            queue_len=sum(int(s.get("waiting", 0)) for s in stats),
            running=sum(int(s.get("running", 0)) for s in stats),
            ttft_p95_ms=percentile(ttft, 95), tpot_p95_ms=percentile(tpot, 95), e2e_p95_ms=percentile(e2e, 95),
            cache_usage=max(usage) if usage else None,
            num_samples=len(ok),
            requests_per_s=len(self.arrivals) / self.window_s,
        )

    def slo_attainment(self, now: float, slo: SLO) -> tuple[int, int]:
        """(requests that met every target, requests finished) over the window."""
        self.trim(now)
        return sum(meets_slo(o, slo) for o in self.finished), len(self.finished)


def _cache_usage(stats: dict[str, Any]) -> float | None:
    """Fraction of the cache's token capacity in use (slots are pre-sized, so tokens are what fills)."""
    for key in ("cache_token_usage", "cache_usage"):
        value = stats.get(key)
        if isinstance(value, (int, float)):
            return float(value)
    return None
