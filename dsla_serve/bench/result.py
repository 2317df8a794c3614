"""One request's outcome as a client saw it: what `report.py` summarises, whoever measured it (the HTTP
client of `client.py`, or a driver that runs engines in its own process)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """One request's outcome. Times in seconds from when it was sent; `late_s`: how far behind its
    scheduled time it was sent (the client's own lag)."""

    sent_at: float
    e2e_s: float
    ttft_s: float | None = None
    tpot_s: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int = 0
    depth: int | None = None
    error: str | None = None
    late_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None
