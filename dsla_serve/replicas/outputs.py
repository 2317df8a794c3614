"""What the engine returns for a request (vLLM's shape: `RequestOutput.outputs[0].text` ...)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

TokenLogprobs = dict[int, float]  # token id -> log-probability


class QueueFullError(RuntimeError):
    """The engine's waiting queue is at its cap (`max_queue`); retry later or route elsewhere."""


class PromptTooLongError(ValueError):
    """A prompt (plus the tokens it asks for) does not fit the engine's context limit."""


class DepthUnavailableError(RuntimeError):
    """A request must run at a depth the engine does not serve now (or is draining away from)."""


@dataclass
class CompletionOutput:
    """One generated sequence.

    text / token_ids: everything generated so far (cut at a stop string, when one matched).
    new_text / new_token_ids: what was added since the previous output of the same stream.
    logprobs: one {token: log-probability} per generated token when asked, else None.
    finish_reason: None while running, else "stop" (EOS, stop string or stop token), "length"
        (max_tokens or the context limit), "abort" or "error".
    stop_reason: the stop string or stop token id that ended it, if any.
    """

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprobs] | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    new_text: str = ""
    new_token_ids: list[int] = field(default_factory=list)

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """Timestamps (time.monotonic seconds) and the latencies derived from them."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None

    @property
    def ttft(self) -> float | None:
        """Time to first token (s)."""
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time


@dataclass
class RequestOutput:
    """The state of one request as of the latest engine step.

    prompt_logprobs: with `echo` / `prompt_logprobs`, one entry per prompt token: None for the first,
        then {token: log-probability} holding the actual token and the top n.
    error: why the request failed (finish_reason "error"), else None.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    metrics: RequestMetrics | None = None
    error: str | None = None


def failed_output(prompt, error: Exception) -> RequestOutput:
    """The output of a prompt refused before it ran (finish_reason "error", `error` = the message)."""
    return RequestOutput(
        request_id=uuid.uuid4().hex, prompt=prompt if isinstance(prompt, str) else None,
        prompt_token_ids=[] if isinstance(prompt, str) else list(prompt),
        outputs=[CompletionOutput(index=0, text="", token_ids=[], finish_reason="error")],
        finished=True, error=str(error))
