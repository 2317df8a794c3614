"""What the trainer tells other processes (dataclasses; no torch): its progress and each layer it published.

    TrainerActor.progress()                  -> TrainerProgress     (the policy actor reads it every interval)
    subscriber.on_layer_published(result)    <- LayerResult         (from the trainer actor, per published layer)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrainerProgress:
    """What a trainer is doing now.

    phase: idle | loading | ordering | training | validating | done | stopped | failed, or, from the
        policy actor, "waiting for the pools to serve" (not started) and "unreachable" (no answer).
    layer / step / steps / loss: the layer being trained and its last optimiser step.
    published_depth / target_depth: layers in the artifact / the run's goal.
    error: why it failed (phase "failed" or "unreachable"). running: its thread is alive (actor only).
    """

    phase: str = "idle"
    layer: int | None = None
    step: int = 0
    steps: int = 0
    loss: float | None = None
    published_depth: int = 0
    target_depth: int | None = None
    error: str | None = None
    running: bool = False


@dataclass(frozen=True)
class LayerResult:
    """A layer the trainer published: decoder layer `layer` at `rank` of the order (depth rank + 1),
    with the metrics it measured (also in the artifact's manifest entry)."""

    layer: int
    rank: int
    metrics: dict = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return self.rank + 1
