"""Prometheus metrics of the application, served by the ingress at `GET /metrics` on the serving port
(a fixed scrape target; no API key, as vLLM's /metrics).

Counted in the ingress as requests end (what clients see):

    dsla_requests_total{pool, depth, endpoint, outcome}        outcome: ok | error
    dsla_ttft_seconds, dsla_tpot_seconds, dsla_e2e_seconds      histograms {pool, depth}
    dsla_slo_violations_total{pool, depth, target}             target: ttft_p95_ms | tpot_p95_ms | e2e_p95_ms | failed
    dsla_rejected_requests_total{reason}                       refused before serving (queue_full, too_large, ...)

Read from the policy actor's `Status` at each scrape (gauges):

    dsla_queue_length{pool}, dsla_running_requests{pool}       requests waiting / running in a pool's engines
    dsla_routing_weight{pool}, dsla_pool_depth{pool}            share of new requests, depth target
    dsla_pool_replicas{pool}, dsla_pool_replica_target{pool}    replicas serving now, and wanted
    dsla_quality_floor, dsla_available_depth                    deepest depth allowed, layers published
    dsla_slo_attainment                                         share of the window's requests meeting every target
    dsla_ingress_in_flight{pool}, dsla_ingress_waiting          the ingress's own counts
    dsla_policy_actor_up                                        1 when the policy actor answered this scrape
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ..messages import Status

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _StatusGauges:
    """A collector of the gauges above from the last `Status` given (set right before each scrape)."""

    def __init__(self):
        self.status: Status | None = None
        self.in_flight: dict[str, int] = {}
        self.waiting = 0

    def collect(self):
        status = self.status
        up = GaugeMetricFamily("dsla_policy_actor_up", "1 when the policy actor answered this scrape")
        up.add_metric([], 0.0 if status is None else 1.0)
        yield up
        in_flight = GaugeMetricFamily("dsla_ingress_in_flight", "requests the ingress has in flight", labels=["pool"])
        for pool, n in self.in_flight.items():
            in_flight.add_metric([pool], n)
        yield in_flight
        waiting = GaugeMetricFamily("dsla_ingress_waiting", "requests in flight beyond what the pools run at once")
        waiting.add_metric([], self.waiting)
        yield waiting
        if status is None:
            return
        per_pool = {
            "dsla_queue_length": ("requests waiting in a pool's engines", lambda p: p.queue_len),
            "dsla_running_requests": ("requests a pool's engines are running", lambda p: p.running),
            "dsla_routing_weight": ("share of new requests routed to a pool", lambda p: p.weight),
            "dsla_pool_depth": ("a pool's depth target", lambda p: p.depth_target),
            "dsla_pool_replicas": ("a pool's replicas serving now", lambda p: p.replicas.running),
            "dsla_pool_replica_target": ("a pool's replica target", lambda p: p.replicas.target),
        }
        for name, (help_text, value) in per_pool.items():
            family = GaugeMetricFamily(name, help_text, labels=["pool"])
            for pool in status.pools:
                v = value(pool)
                if v is not None:
                    family.add_metric([pool.name], float(v))
            yield family
        for name, help_text, value in (
                ("dsla_quality_floor", "deepest depth the quality policy allows now", status.quality.floor),
                ("dsla_available_depth", "layers published in the artifact", status.quality.available_depth),
                ("dsla_slo_attainment", "share of the window's finished requests meeting every SLO target",
                 status.slo.attainment)):
            if value is not None:
                family = GaugeMetricFamily(name, help_text)
                family.add_metric([], float(value))
                yield family


class IngressMetrics:
    """The registry served at /metrics: per-request metrics tagged by pool and serving depth, and the
    policy actor's gauges."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("dsla_requests", "requests answered, by pool, depth, route and outcome",
                                ("pool", "depth", "endpoint", "outcome"), registry=r)
        self.ttft = Histogram("dsla_ttft_seconds", "time to first token as the client sees it", ("pool", "depth"),
                              buckets=LATENCY_BUCKETS_S, registry=r)
        self.tpot = Histogram("dsla_tpot_seconds", "time per output token after the first", ("pool", "depth"),
                              buckets=LATENCY_BUCKETS_S, registry=r)
        self.e2e = Histogram("dsla_e2e_seconds", "whole request", ("pool", "depth"), buckets=LATENCY_BUCKETS_S,
                             registry=r)
        self.slo_violations = Counter("dsla_slo_violations", "finished requests over an SLO target",
                                      ("pool", "depth", "target"), registry=r)
        self.rejected = Counter("dsla_rejected_requests", "requests refused before serving, by reason", ("reason",),
                                registry=r)
        self.gauges = _StatusGauges()
        r.register(self.gauges)

    def finished(self, pool: str, depth: int | None, endpoint: str, outcome: str, ttft_s: float | None,
                 tpot_s: float | None, e2e_s: float, violated: list[str]) -> None:
        depth_label = str(depth) if depth is not None else "unknown"
        self.requests.labels(pool, depth_label, endpoint, outcome).inc()
        if ttft_s is not None:
            self.ttft.labels(pool, depth_label).observe(ttft_s)
        if tpot_s is not None:
            self.tpot.labels(pool, depth_label).observe(tpot_s)
        self.e2e.labels(pool, depth_label).observe(e2e_s)
        for target in violated:
            self.slo_violations.labels(pool, depth_label, target).inc()

    def refused(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def render(self, status: Status | None, in_flight: dict[str, int], waiting: int) -> bytes:
        """The Prometheus text exposition, with the gauges of `status` (None: the policy actor did not answer)."""
        self.gauges.status, self.gauges.in_flight, self.gauges.waiting = status, dict(in_flight), waiting
        return generate_latest(self.registry)
