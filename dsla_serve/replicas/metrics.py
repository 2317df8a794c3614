"""Rolling latency and throughput figures of an engine, for `engine.stats()` (routing, autoscaling)."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # this module imports no torch: the policy actor and `dsla-serve bench` use `percentile`
    from .request import Request

WINDOW_REQUESTS = 512  # percentiles over the most recent finished requests
WINDOW_SECONDS = 10.0  # tokens/s over the most recent seconds


def percentile(values, q: float) -> float | None:
    """The q-th percentile (0-100) of values by linear interpolation; None when empty."""
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class EngineMetrics:
    """Counters and recent TTFT / TPOT / token rate. Thread-safe (written by the engine thread)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._ttft: deque[float] = deque(maxlen=WINDOW_REQUESTS)
        self._tpot: deque[float] = deque(maxlen=WINDOW_REQUESTS)
        self._tokens: deque[tuple[float, int]] = deque()
        self.requests_total = 0
        self.completed = 0
        self.failed = 0
        self.aborted = 0
        self.generated_tokens = 0

    def on_arrival(self) -> None:
        with self._lock:
            self.requests_total += 1

    def on_tokens(self, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.generated_tokens += n
            self._tokens.append((now, n))
            self._trim(now)

    def on_finished(self, req: Request) -> None:
        m = req.metrics
        with self._lock:
            if req.finish_reason == "error":
                self.failed += 1
                return
            if req.finish_reason == "abort":
                self.aborted += 1
                return
            self.completed += 1
            if m.first_token_time is not None:
                self._ttft.append(m.first_token_time - m.arrival_time)
                n = len(req.output_ids)
                if n > 1 and m.finished_time is not None:
                    self._tpot.append((m.finished_time - m.first_token_time) / (n - 1))

    def _trim(self, now: float) -> None:
        while self._tokens and self._tokens[0][0] < now - WINDOW_SECONDS:
            self._tokens.popleft()

    def snapshot(self) -> dict:
        """The latency and counter fields of `EngineStats`, as its keyword arguments."""
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            recent = sum(n for _, n in self._tokens)
            ttft, tpot = list(self._ttft), list(self._tpot)
            return {
                "ttft_p50_s": percentile(ttft, 50), "ttft_p95_s": percentile(ttft, 95),
                "tpot_p50_s": percentile(tpot, 50), "tpot_p95_s": percentile(tpot, 95),
                "tokens_per_s": recent / WINDOW_SECONDS,
                "requests_total": self.requests_total, "completed": self.completed,
                "failed": self.failed, "aborted": self.aborted, "generated_tokens": self.generated_tokens,
            }
