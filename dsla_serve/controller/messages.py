"""What crosses a process boundary inside the application, between the HTTP front end and the control
plane: one dataclass per message, imported by both sides (the replicas' messages are in
`replicas/messages.py`, the trainer's in `trainer/progress.py`).

    ingress      -> policy actor   Arrival, Observation     each request's arrival and end, batched
    policy actor -> ingress        Routing                  weights, replica and depth targets per pool
    policy actor -> ingress, CLI   Status                   the /v1/dsla/status body (JSON of these dataclasses)

Times in `Arrival` and `Observation` are `time.monotonic()` seconds of the ingress's host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..policies import SLO
from ..trainer.progress import TrainerProgress


@dataclass(frozen=True)
class Arrival:
    """A request reached the ingress and was drawn to `pool` (refused or not: the offered load)."""

    pool: str
    at: float


@dataclass(frozen=True)
class Observation:
    """One finished request as the ingress saw it. Times in seconds; tpot None for one token or less."""

    pool: str
    at: float
    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float
    ok: bool = True

    def missed_targets(self, slo: SLO) -> list[str]:
        """The SLO targets it missed, named as in the policy (["failed"] for a failed request)."""
        return slo.missed_targets(self.ttft_s, self.tpot_s, self.e2e_s, self.ok)

    def meets(self, slo: SLO) -> bool:
        """Whether it met every latency target (a failed request never does)."""
        return not self.missed_targets(slo)


@dataclass(frozen=True)
class Routing:
    """What the ingress routes by: per pool, the weight (sum 1, or all 0 = nothing routable yet), the
    replica target and the depth target; `version` changes whenever any of them does.

    stable_depth: per pool, the depth every live replica serves now without draining (None: no replica
        reports, they differ, or one drains): where requests may spill over (when <= `floor`) and where
        a request naming a depth (`MODEL@dN`) may go.
    floor: the quality floor; published_depth: layers published in the artifact.
    running: per pool, the replicas reporting now (running; a replica target not yet placed or still
        starting is not counted): the ingress counts a pool's free slots from these.
    """

    weights: dict[str, float]
    replicas: dict[str, int]
    depths: dict[str, int]
    version: int
    stable_depth: dict[str, int | None] = field(default_factory=dict)
    floor: int = 0
    published_depth: int = 0
    running: dict[str, int] = field(default_factory=dict)

    @property
    def routable(self) -> bool:
        return sum(self.weights.values()) > 0


# -------------------------------------------------------------------------------------------------
# the status body
# -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplicaCounts:
    running: int
    target: int
    min: int
    max: int
    ids: list[str]


@dataclass(frozen=True)
class PoolStatus:
    """One pool: its depths (configured, target, served now by its replicas, loaded by all of them,
    loaded when they started), traffic, replicas and the window's figures (None: no replica reported)."""

    name: str
    configured_depth: int
    depth_target: int
    serving_depths: list[int]
    loaded_depth: int | None
    started_depth: int | None
    weight: float
    replicas: ReplicaCounts
    queue_len: int | None
    running: int | None
    ttft_p95_ms: float | None
    tpot_p95_ms: float | None
    e2e_p95_ms: float | None
    cache_usage: float | None
    requests_per_s: float
    samples: int
    slo_attainment: float | None
    pressure: str


@dataclass(frozen=True)
class SLOStatus:
    """The targets, and how many requests finished in the window and met every one of them."""

    ttft_p95_ms: float
    tpot_p95_ms: float
    e2e_p95_ms: float | None
    window_s: float
    met: int
    finished: int
    attainment: float | None


@dataclass(frozen=True)
class DepthRow:
    """A published depth: the layer that completes it, the ppl ratio measured then (None: not
    measured), whether the quality floor allows it, and the trainer's other metrics."""

    depth: int
    layer: int
    ppl_ratio: float | None
    allowed: bool
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class QualityStatus:
    """The quality floor and why it is not deeper, the policy's limits, and the artifact's depths."""

    floor: int
    floor_reason: str
    max_ppl_ratio: float | None
    max_depth: int | None
    available_depth: int
    planned_depth: int
    artifact: str | None
    artifact_error: str | None
    depths: list[DepthRow]


@dataclass(frozen=True)
class ControllerStatus:
    """The controller's settings, its last pressure, and why scaling last failed (None: it did not)."""

    interval_s: float
    window_s: float
    cooldown_s: float
    hysteresis: float
    pressure: str | None
    scaling_error: str | None = None


@dataclass(frozen=True)
class DecisionRecord:
    """One decision of the policy actor; `time` in Unix seconds."""

    time: float
    reason: str
    changed: bool
    pressure: str
    floor: int
    weights: dict[str, float]
    depth_targets: dict[str, int]
    replica_targets: dict[str, int]


@dataclass(frozen=True)
class PromptSampleStatus:
    """Counts of the served-prompt sample (never the prompts)."""

    kept: int
    capacity: int
    seen: int
    file: str


@dataclass(frozen=True)
class IngressStatus:
    in_flight: dict[str, int]
    waiting: int
    queue_cap: int
    routing_version: int
    routing_error: str | None
    served_prompt_sample: PromptSampleStatus | None = None


@dataclass(frozen=True)
class Status:
    """The /v1/dsla/status body: made by the policy actor, completed with `ingress` by the ingress."""

    app: str
    model: str
    uptime_s: float
    routing: dict[str, float]
    routable: bool
    pools: list[PoolStatus]
    slo: SLOStatus
    quality: QualityStatus
    trainer: TrainerProgress | None
    controller: ControllerStatus
    decisions: list[DecisionRecord]
    ingress: IngressStatus | None = None
