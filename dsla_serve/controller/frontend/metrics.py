"""Prometheus metrics of the ingress, through `ray.serve.metrics` (exported by Ray's metrics agent; Serve
adds the deployment, replica and application tags): what clients see, requests by pool, depth and
outcome, TTFT, TPOT, end-to-end latency, SLO violations, and requests refused before serving.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Histogram

_LATENCY_BOUNDARIES_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]


class IngressMetrics:
    """Per-request metrics, tagged by pool and the depth that served."""

    def __init__(self):
        self.requests = Counter("dsla_requests", description="requests answered, by pool, depth, route and outcome",
                                tag_keys=("pool", "depth", "endpoint", "outcome"))
        self.ttft = Histogram("dsla_ttft_seconds", description="time to first token as the client sees it",
                              boundaries=_LATENCY_BOUNDARIES_S, tag_keys=("pool", "depth"))
        self.tpot = Histogram("dsla_tpot_seconds", description="time per output token after the first",
                              boundaries=_LATENCY_BOUNDARIES_S, tag_keys=("pool", "depth"))
        self.e2e = Histogram("dsla_e2e_seconds", description="whole request",
                             boundaries=_LATENCY_BOUNDARIES_S, tag_keys=("pool", "depth"))
        self.slo_violations = Counter("dsla_slo_violations", description="finished requests over an SLO target",
                                      tag_keys=("pool", "depth", "target"))
        self.rejected = Counter("dsla_rejected_requests", description="requests refused before serving, by reason",
                                tag_keys=("reason",))

    def finished(self, pool: str, depth: int | None, endpoint: str, outcome: str, ttft_s: float | None,
                 tpot_s: float | None, e2e_s: float, violated: list[str]) -> None:
        tags = {"pool": pool, "depth": str(depth if depth is not None else "unknown")}
        self.requests.inc(1, {**tags, "endpoint": endpoint, "outcome": outcome})
        if ttft_s is not None:
            self.ttft.observe(ttft_s, tags)
        if tpot_s is not None:
            self.tpot.observe(tpot_s, tags)
        self.e2e.observe(e2e_s, tags)
        for target in violated:
            self.slo_violations.inc(1, {**tags, "target": target})

    def refused(self, reason: str) -> None:
        self.rejected.inc(1, {"reason": reason})
