"""When requests are sent: offsets in seconds from the start of a run, with what each asks for.

    poisson(rate=4, count=200, seed=0)            exponential gaps, mean 1 / rate
    gamma(rate=4, cv=3, count=200, seed=0)        gamma gaps of the same mean; cv > 1 is bursty
    phases([(0.5, 20), (8, 20)], seed=0)          Poisson phases back to back: (rate, seconds) each
    read_trace("burst.jsonl")                     {"t": 0.52, "prompt_tokens": 200, "output_tokens": 64} a line

A trace fixes lengths per request; the synthetic processes leave them to the workload's distributions
(None here).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Arrival:
    """One request: sent `at` seconds after the run starts; lengths in tokens (None: drawn by the workload)."""

    at: float
    prompt_tokens: int | None = None
    output_tokens: int | None = None


def poisson(rate: float, count: int, seed: int = 0) -> list[Arrival]:
    """A Poisson process of `rate` requests/s: exponential gaps."""
    return gamma(rate, 1.0, count, seed)


def gamma(rate: float, cv: float, count: int, seed: int = 0) -> list[Arrival]:
    """Gaps drawn from a gamma distribution with mean 1 / rate and coefficient of variation `cv`
    (shape 1 / cv^2): cv = 1 is Poisson, larger is burstier at the same mean rate."""
    if rate <= 0 or cv <= 0 or count < 0:
        raise ValueError(f"rate and cv must be > 0 and count >= 0, got rate {rate}, cv {cv}, count {count}")
    rng = random.Random(seed)
    shape = 1.0 / cv**2
    at, out = 0.0, []
    for _ in range(count):
        out.append(Arrival(at))
        at += rng.gammavariate(shape, 1.0 / (shape * rate))
    return out


def phases(segments: list[tuple[float, float]], seed: int = 0) -> list[Arrival]:
    """Poisson arrivals in phases back to back, `segments` = [(rate requests/s, seconds), ...]: phase i
    draws from `poisson(rate, ., seed + i)` and keeps what falls within its seconds (a burst trace:
    quiet and busy phases alternating)."""
    out, start = [], 0.0
    for i, (rate, seconds) in enumerate(segments):
        for a in poisson(rate, int(rate * seconds * 3), seed + i):
            if a.at < seconds:
                out.append(Arrival(start + a.at))
        start += seconds
    return out


def read_trace(path: str | Path) -> list[Arrival]:
    """A JSON-lines trace: `t` (seconds from its start), `prompt_tokens`, `output_tokens` per line, in any order."""
    out = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append(Arrival(float(row["t"]), int(row["prompt_tokens"]), int(row["output_tokens"])))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: line {number}: expected {{\"t\", \"prompt_tokens\", \"output_tokens\"}}: "
                             f"{e}") from None
    out.sort(key=lambda a: a.at)
    start = out[0].at if out else 0.0
    return [Arrival(a.at - start, a.prompt_tokens, a.output_tokens) for a in out]


def write_trace(path: str | Path, arrivals: list[Arrival]) -> None:
    Path(path).write_text("".join(json.dumps({"t": round(a.at, 4), "prompt_tokens": a.prompt_tokens,
                                              "output_tokens": a.output_tokens}) + "\n" for a in arrivals))


def scaled(arrivals: list[Arrival], rate: float) -> list[Arrival]:
    """The same trace replayed at `rate` requests/s on average (its shape kept)."""
    if len(arrivals) < 2 or arrivals[-1].at <= 0:
        return list(arrivals)
    factor = (len(arrivals) - 1) / arrivals[-1].at / rate
    return [Arrival(a.at * factor, a.prompt_tokens, a.output_tokens) for a in arrivals]
