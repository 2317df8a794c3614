"""Learning-rate schedule of one layer's training: linear warm-up, then cosine decay (or constant)."""

from __future__ import annotations

import math


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int, schedule: str = "cosine",
                  min_ratio: float = 0.1) -> float:
    """Factor applied to the peak learning rate for optimiser step `step` (0-based).

    Warm-up rises linearly to 1 over `warmup_steps` (the first step already gets 1/warmup, never 0);
    `cosine` then falls to `min_ratio` at the last step, `constant` stays at 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}; choose cosine or constant")
    decay_steps = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
