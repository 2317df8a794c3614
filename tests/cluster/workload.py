"""What the cluster tests send and train on: a small corpus, and a bounded request load that records every
request's outcome (answered, refused with a code, or hung past its deadline)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx

WORDS = "the cat sat on a mat while rain fell over old stone walls and the dog ran home past green doors".split()


def corpus(folder):
    folder.mkdir(parents=True)
    for d in range(8):
        words = [WORDS[(d * 7 + i * (1 + i % 3)) % len(WORDS)] for i in range(300)]
        (folder / f"doc_{d}.txt").write_text(" ".join(words) + ".\n")
    return folder


@dataclass(frozen=True)
class Outcome:
    """One request: when it was sent and ended (monotonic s), its HTTP status (None: no answer within the
    client's deadline or the connection failed), the depth that served it, the error code."""

    sent: float
    ended: float
    status: int | None
    depth: str | None = None
    code: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class Load:
    """`clients` threads sending completions back to back to `url` until `stop()` (or `max_s`); each request
    has a deadline of `deadline_s`: one that passes it counts as hung."""

    url: str
    clients: int = 2
    deadline_s: float = 60.0
    max_s: float = 600.0
    max_tokens: int = 8
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]

    def start(self) -> Load:
        self.started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for t in self._threads:
            t.join(self.deadline_s + 10)
        return sorted(self.outcomes, key=lambda o: o.sent)

    def _client(self) -> None:
        body = {"model": "tiny-llama", "prompt": "the cat sat", "max_tokens": self.max_tokens, "temperature": 0,
                "ignore_eos": True}
        with httpx.Client(timeout=self.deadline_s) as client:
            while not self._stop.is_set() and time.monotonic() - self.started < self.max_s:
                sent = time.monotonic()
                try:
                    r = client.post(f"{self.url}/v1/completions", json=body)
                    outcome = Outcome(sent, time.monotonic(), r.status_code, r.headers.get("X-DSLA-Depth"),
                                      None if r.status_code == 200 else _error_code(r))
                except httpx.HTTPError as e:
                    outcome = Outcome(sent, time.monotonic(), None, error=type(e).__name__)
                with self._lock:
                    self.outcomes.append(outcome)
                if not outcome.ok:
                    time.sleep(0.2)  # as a client honouring Retry-After would, briefly


def _error_code(response: httpx.Response) -> str:
    """The OpenAI-style error code of the ingress, or what answered instead (Serve's proxy answers plain text)."""
    try:
        error = response.json()["error"]
        return f"{response.status_code} {error['code'] or error['message'][:60]}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code} {response.text[:60]!r}"


def summary(outcomes: list[Outcome], start: float) -> dict:
    """Counts by outcome, and the failed ones relative to `start` (s)."""
    failed = [o for o in outcomes if not o.ok]
    return {"requests": len(outcomes), "ok": len(outcomes) - len(failed),
            "failed": len(failed), "hung": sum(o.status is None and o.error == "ReadTimeout" for o in failed),
            "codes": sorted({str(o.code or o.status or o.error) for o in failed}),
            "failed_between_s": [round(min(o.sent for o in failed) - start, 1),
                                 round(max(o.ended for o in failed) - start, 1)] if failed else None,
            "longest_s": round(max((o.ended - o.sent for o in outcomes), default=0.0), 1),
            "slower_than_5s": sum(o.ended - o.sent > 5 for o in outcomes)}
