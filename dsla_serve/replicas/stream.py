"""`RequestStream`: the outputs of one request as they are produced, for sync or async iteration.

The engine (its loop thread, or whoever calls `step()`) puts `RequestOutput` snapshots in; a consumer
iterates them. Without a loop thread, iterating drives the engine itself (`for out in stream` steps
the engine until the next output), so offline code needs no thread. Async iteration is woken from the
engine thread through `loop.call_soon_threadsafe`, so any number of streams can wait on one event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable

from .outputs import RequestOutput


class RequestStream:
    """Iterable (and async-iterable) outputs of one request; the last one has `finished=True`."""

    def __init__(self, request_id: str, drive: Callable[[], bool], abort: Callable[[str], None],
                 keep_history: bool = True):
        """`drive()` runs one engine step when no loop thread does and says whether it did;
        `abort(request_id)` cancels the request; without `keep_history` the engine puts only the
        final output."""
        self.request_id = request_id
        self.keep_history = keep_history
        self._drive = drive
        self._abort = abort
        self._items: deque[RequestOutput] = deque()
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._closed = False  # the finished output has been put
        self._done = False  # ... and taken by the consumer
        self.last: RequestOutput | None = None

    # producer side (engine thread) -----------------------------------------------------------
    def put(self, output: RequestOutput) -> None:
        with self._cond:
            if self._closed:
                return
            self._items.append(output)
            self.last = output
            self._closed = output.finished
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_wake, fut)

    @property
    def finished(self) -> bool:
        """The request is over (its final output has been produced)."""
        return self._closed

    def abort(self) -> None:
        """Cancel the request; the stream then ends with finish_reason "abort"."""
        self._abort(self.request_id)

    # consumer side ---------------------------------------------------------------------------
    def _pop(self) -> RequestOutput | None:
        if self._items:
            out = self._items.popleft()
            self._done = out.finished
            return out
        return None

    def __iter__(self):
        return self

    def __next__(self) -> RequestOutput:
        while True:
            with self._cond:
                if self._done:
                    raise StopIteration
                out = self._pop()
                if out is not None:
                    return out
            if not self._drive():
                with self._cond:
                    if not self._items and not self._done:
                        self._cond.wait(timeout=0.1)

    def __aiter__(self):
        return self

    async def __anext__(self) -> RequestOutput:
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._done:
                    raise StopAsyncIteration
                out = self._pop()
                if out is not None:
                    return out
            if self._drive():  # no loop thread: step inline, then look again
                await asyncio.sleep(0)
                continue
            with self._cond:  # a loop thread steps: wait for its next output (registered under the lock)
                if self._done or self._items:
                    continue
                fut = loop.create_future()
                self._waiters.append((loop, fut))
            await fut

    def result(self) -> RequestOutput:
        """Wait for (driving the engine if needed) and return the final output."""
        for _ in self:
            pass
        assert self.last is not None and self.last.finished
        return self.last


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
