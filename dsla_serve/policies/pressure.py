"""From one pool's metrics to a pressure level: is it over its targets, comfortably under, or unknown?

Each signal is a ratio observed / target, so 1.0 is "exactly on target":

    ttft_p95_ms, tpot_p95_ms, e2e_p95_ms   percentile / SLO target       (needs num_samples >= min_samples)
    cache_usage                            cache fraction / max_cache_usage          (a gauge, always read)
    queue                                  waiting requests / (replicas * max_concurrent_requests)  (gauge)

Levels: HIGH if any ratio > 1, or the queue grew since the previous decision while above (1 - h) of its
budget; LOW if every ratio < 1 - h and the percentiles are trustworthy; UNKNOWN if the percentiles are
not trustworthy and no gauge is high; NEUTRAL otherwise (inside the hysteresis band: hold).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .schema import Policy, Pool

__all__ = ["PoolMetrics", "PoolSignal", "HIGH", "NEUTRAL", "LOW", "UNKNOWN", "pool_signal", "overall_level"]

HIGH, NEUTRAL, LOW, UNKNOWN = "high", "neutral", "low", "unknown"

_LATENCY = ("ttft_p95_ms", "tpot_p95_ms", "e2e_p95_ms")


@dataclass(frozen=True)
class PoolMetrics:
    """One pool's state over the controller's window, summed or maxed over its replicas.

    depth: the depth its replicas serve at now (as they report it, not the target).
    replicas: replicas running now.
    queue_len: requests waiting to start; running: requests being served.
    *_p95_ms: percentiles over the window (None when no request finished).
    cache_usage: fraction of the KV/state cache in use, 0..1 (the fullest replica).
    num_samples: finished requests behind the percentiles.
    requests_per_s: arrival rate over the window (remembered with each change made under pressure).
    """

    name: str
    depth: int
    replicas: int
    queue_len: int = 0
    running: int = 0
    ttft_p95_ms: float | None = None
    tpot_p95_ms: float | None = None
    e2e_p95_ms: float | None = None
    cache_usage: float | None = None
    num_samples: int = 0
    requests_per_s: float = 0.0

    @property
    def ongoing(self) -> int:
        return self.queue_len + self.running


@dataclass(frozen=True)
class PoolSignal:
    """A pool's pressure level, the ratios behind it, and the worst one in words."""

    level: str
    ratios: dict[str, float] = field(default_factory=dict)
    worst: str = ""


def _targets(policy: Policy) -> dict[str, float | None]:
    return {"ttft_p95_ms": policy.slo.ttft_p95_ms, "tpot_p95_ms": policy.slo.tpot_p95_ms,
            "e2e_p95_ms": policy.slo.e2e_p95_ms}


def pool_signal(pool: Pool, metrics: PoolMetrics | None, policy: Policy, previous_queue_len: int = 0) -> PoolSignal:
    """The pressure level of one pool (see the module docstring)."""
    if metrics is None:
        return PoolSignal(UNKNOWN, {}, "no metrics reported")
    ctl = policy.controller
    trusted = metrics.num_samples >= ctl.min_samples
    ratios: dict[str, float] = {}
    words: dict[str, str] = {}
    if trusted:
        for key, target in _targets(policy).items():
            value = getattr(metrics, key)
            if target is not None and value is not None:
                ratios[key] = value / target
                words[key] = f"{key} {value:.0f} ms vs target {target:.0f} ms"
    if metrics.cache_usage is not None:
        ratios["cache_usage"] = metrics.cache_usage / ctl.max_cache_usage
        words["cache_usage"] = f"cache usage {metrics.cache_usage:.0%} vs max {ctl.max_cache_usage:.0%}"
    budget = max(metrics.replicas, 1) * pool.max_concurrent_requests
    ratios["queue"] = metrics.queue_len / budget
    words["queue"] = f"{metrics.queue_len} waiting vs budget {budget}"
    band = 1.0 - ctl.hysteresis
    growing = metrics.queue_len > previous_queue_len and ratios["queue"] > band
    worst_key = max(ratios, key=ratios.get)
    worst = words[worst_key]
    if growing and ratios[worst_key] <= 1.0:
        return PoolSignal(HIGH, ratios, f"queue growing {previous_queue_len} -> {metrics.queue_len} "
                                        f"(budget {budget})")
    if ratios[worst_key] > 1.0:
        return PoolSignal(HIGH, ratios, worst)
    if not trusted or not any(k in ratios for k in _LATENCY):
        return PoolSignal(UNKNOWN, ratios, f"{metrics.num_samples} samples < min_samples {ctl.min_samples}")
    if ratios[worst_key] < band:
        return PoolSignal(LOW, ratios, worst)
    return PoolSignal(NEUTRAL, ratios, worst)


def overall_level(signals: dict[str, PoolSignal], carrying: list[str]) -> str:
    """The level that moves traffic, over the pools that carry traffic now.

    HIGH if any is high; UNKNOWN if none has trustworthy percentiles; LOW if all that do are low;
    NEUTRAL otherwise. A pool with too few samples neither blocks nor triggers a move back.
    """
    levels = [signals[name].level for name in carrying]
    if HIGH in levels:
        return HIGH
    known = [level for level in levels if level != UNKNOWN]
    if not known:
        return UNKNOWN
    return LOW if all(level == LOW for level in known) else NEUTRAL
