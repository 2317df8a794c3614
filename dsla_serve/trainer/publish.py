"""Publishing a trained layer, riding out a store that is briefly unreachable.

    published = publish_layer(artifact, model, layer, metrics, stop_event=stop, on_retry=note)

`Artifact.append_layer` writes the layer's file, then the manifest naming it; a failure of the store
(`ArtifactUnavailable`) in between leaves the layer unpublished, and calling it again is safe (it
recognises a manifest that already ends with this very layer). So a failed attempt is retried, after
1, 2, 4, ... seconds (at most `Backoff.max_s` apart) until `Backoff.give_up_s` have passed since the
first failure; then, or when the store refused access (retrying cannot help), the error is raised and the
trained layer is lost (a rerun trains it again, bit for bit). Other errors are raised at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..model import Artifact
from ..model.manifest import ArtifactUnavailable

log = logging.getLogger("dsla_serve.trainer")

RetryCallback = Callable[[int, float, ArtifactUnavailable], None]  # (failed attempts so far, seconds to wait, error)


@dataclass(frozen=True)
class Backoff:
    """Waits between publishing attempts: first_s, then x factor each time, at most max_s; no new attempt
    starts later than give_up_s after the first failure."""

    first_s: float = 1.0
    factor: float = 2.0
    max_s: float = 60.0
    give_up_s: float = 1800.0

    def delays(self):
        delay = self.first_s
        while True:
            yield delay
            delay = min(delay * self.factor, self.max_s)


def publish_layer(artifact: Artifact, model, layer: int, metrics: dict, *, backoff: Backoff = Backoff(),
                  stop_event: threading.Event | None = None, on_retry: RetryCallback | None = None) -> bool:
    """Append `layer` of `model` to `artifact`, retrying while its store is unreachable. True once
    published; False when `stop_event` was set while waiting (the layer is not published)."""
    failed_at = None
    delays = backoff.delays()
    attempt = 0
    while True:
        attempt += 1
        try:
            artifact.append_layer(model, layer, metrics)
        except ArtifactUnavailable as e:
            now = time.monotonic()
            failed_at = now if failed_at is None else failed_at
            delay = next(delays)
            if not e.retryable or now + delay - failed_at > backoff.give_up_s:
                raise
            log.warning("publishing layer %d failed (attempt %d), retrying in %.1f s: %s", layer, attempt, delay, e)
            if on_retry is not None:
                on_retry(attempt, delay, e)
            if stop_event is not None:
                if stop_event.wait(delay):
                    return False
            else:
                time.sleep(delay)
            continue
        if attempt > 1:
            log.info("published layer %d after %d attempts", layer, attempt)
        return True
