"""How often the application's processes talk, and how much a replica lets wait: read from the policy,
the same for the Ray Serve app (`app.py`, `frontend/ingress_state.py`) and anything that runs its parts
in one process (benchmarks/adaptive_gpu.py). No Ray here."""

from __future__ import annotations

from ..policies import Policy


def report_every_s(policy: Policy) -> float:
    """Seconds between two reports of a replica to the policy actor: half a controller interval, within
    [0.1, 2] s."""
    return min(max(policy.controller.interval_s / 2, 0.1), 2.0)


def routing_every_s(policy: Policy) -> float:
    """Seconds between two fetches of the routing table by the ingress: half a controller interval,
    within [0.1, 1] s."""
    return min(max(policy.controller.interval_s / 2, 0.1), 1.0)


def replica_queue(policy: Policy, pool_name: str) -> int:
    """Requests one replica's engine lets wait: the queue cap, plus one batch of slack.

    The ingress enforces `http.queue_cap` across pools (it knows every request in flight); the engine's
    own cap is a backstop. The slack covers the moment after a batch finishes, when the ingress has
    already released those requests and sends new ones while the engine has not yet admitted its
    waiting ones into the freed slots.
    """
    return policy.http.queue_cap + policy.pool(pool_name).max_concurrent_requests
