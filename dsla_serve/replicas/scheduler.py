"""Continuous-batching scheduler: a bounded waiting queue, the running set, and each step's plan.

Each step (see docs/engine.md):
1. admission: waiting requests take free cache slots, first come first served (none while the engine
   drains for a depth change);
2. decode: every running request that has finished its prompt contributes one token;
3. chunked prefill: prompts still being read get at most `prefill_chunk_tokens` tokens in total,
   first admitted first; a long prompt is spread over several steps, so the decodes running
   alongside it advance every step instead of stalling behind it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .cache import CachePool
from .request import Request, Status


@dataclass
class ScheduledStep:
    prefills: list[tuple[Request, int]] = field(default_factory=list)  # (request, prompt tokens this step)
    decodes: list[Request] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.prefills and not self.decodes

    def requests(self) -> list[Request]:
        return [r for r, _ in self.prefills] + self.decodes


class Scheduler:
    def __init__(self, max_queue: int, prefill_chunk_tokens: int):
        self.max_queue = max_queue
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order

    def admit(self, pool: CachePool, hold: bool) -> list[Request]:
        """Move waiting requests into free slots (none when `hold`)."""
        admitted = []
        while self.waiting and pool.num_free and not hold:
            req = self.waiting.popleft()
            req.slot = pool.allocate()
            req.status = Status.RUNNING
            self.running.append(req)
            admitted.append(req)
        return admitted

    def schedule(self) -> ScheduledStep:
        step = ScheduledStep()
        budget = self.prefill_chunk_tokens
        for req in self.running:
            if not req.prefilling:
                step.decodes.append(req)
            elif budget > 0:
                n = min(budget, req.prompt_len - req.num_computed)
                step.prefills.append((req, n))
                budget -= n
        return step

    def remove(self, req: Request, pool: CachePool) -> None:
        """Take a request out of the queue or the running set, freeing its slot."""
        if req in self.running:
            self.running.remove(req)
            if req.slot is not None:
                pool.release(req.slot)
                req.slot = None
        elif req in self.waiting:
            self.waiting.remove(req)

    def cached_tokens(self) -> int:
        return sum(r.num_computed for r in self.running)
