"""DSLA layer configuration (a dataclass: the model package must import without pydantic)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DSLAConfig:
    """How a softmax attention layer becomes a DSLA layer.

    tau: divisor of the log-sigmoid gates (the paper's 16): g = logsigmoid(W x + b) / tau.
    gate_rank: None = full-rank gate projections (hidden -> H*K, as the paper); an int r = low rank
        (hidden -> r -> H*K), far fewer parameters.
    history_gate_bias, recency_gate_bias: initial biases of the two gates. The default 0 for both (the
        paper's initialisation) starts each state at a per-token decay of exp(logsigmoid(0) / 16) ~=
        0.958 (half-life ~ 16 tokens); the gates learn their own. A specialised start (4.0: decay
        0.9989, half-life ~ 630 tokens; -1.1: decay 0.917, half-life ~ 8) lost to it on the reference
        teacher: +28.8% perplexity at half depth against +16.0% (docs/quality.md).
    mix_init: initial logits of the two read-out weights (softmax over the pair, per head).
    """

    tau: float = 16.0
    gate_rank: int | None = None
    history_gate_bias: float = 0.0
    recency_gate_bias: float = 0.0
    mix_init: tuple[float, float] = field(default=(0.0, 0.0))

    def __post_init__(self):
        if self.tau <= 0:
            raise ValueError(f"DSLAConfig.tau must be > 0, got {self.tau}")
        if self.gate_rank is not None and self.gate_rank < 1:
            raise ValueError(f"DSLAConfig.gate_rank must be None or >= 1, got {self.gate_rank}")
        if len(self.mix_init) != 2:
            raise ValueError(f"DSLAConfig.mix_init must have 2 values, got {self.mix_init!r}")
        object.__setattr__(self, "mix_init", tuple(float(x) for x in self.mix_init))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["mix_init"] = list(self.mix_init)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DSLAConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown DSLAConfig field(s): {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)
