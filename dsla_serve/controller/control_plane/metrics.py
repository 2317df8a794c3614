"""Prometheus metrics of the policy actor, through `ray.serve.metrics` (exported by Ray's metrics agent;
Serve adds the deployment, replica and application tags): queue length and running requests per pool,
routing weights, depth and replica targets, the quality floor and the published depth.
"""

from __future__ import annotations

from ray.serve.metrics import Gauge


class ControllerMetrics:
    """Per-pool gauges set at each decision."""

    def __init__(self):
        self.queue = Gauge("dsla_queue_length", description="requests waiting in a pool's engines",
                           tag_keys=("pool",))
        self.running = Gauge("dsla_running_requests", description="requests a pool's engines are running",
                             tag_keys=("pool",))
        self.weight = Gauge("dsla_routing_weight", description="share of new requests routed to a pool",
                            tag_keys=("pool",))
        self.depth = Gauge("dsla_pool_depth", description="a pool's depth target", tag_keys=("pool",))
        self.replicas = Gauge("dsla_pool_replicas", description="a pool's replica target", tag_keys=("pool",))
        self.floor = Gauge("dsla_quality_floor", description="deepest depth the quality policy allows now")
        self.available = Gauge("dsla_available_depth", description="layers published in the artifact")

    def decided(self, decision, metrics_by_pool: dict, available_depth: int) -> None:
        for pool, weight in decision.weights.items():
            tags = {"pool": pool}
            self.weight.set(weight, tags)
            self.depth.set(decision.depth_targets[pool], tags)
            self.replicas.set(decision.replica_targets[pool], tags)
            m = metrics_by_pool.get(pool)
            if m is not None:
                self.queue.set(m.queue_len, tags)
                self.running.set(m.running, tags)
        self.floor.set(decision.floor)
        self.available.set(available_depth)
