"""`Request`: the engine's record of one sequence (tokens, cache slot, progress, stop conditions)."""

from __future__ import annotations

import enum
import time

import torch

from .detokenize import IncrementalDetokenizer, StopStringMatcher
from .outputs import CompletionOutput, RequestMetrics, RequestOutput, TokenLogprobs
from .sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"  # in the queue, no cache slot
    RUNNING = "running"  # holds a slot: prefilling, then decoding
    FINISHED = "finished"


class Request:
    """One request from arrival to finish.

    Cache progress: `num_computed` tokens (prompt, then generated) are in the cache slot. While
    `num_computed < len(prompt_ids)` the request is prefilling; afterwards each decode step feeds
    the last generated token at position `num_computed`.
    """

    def __init__(self, request_id: str, prompt: str | None, prompt_ids: list[int], params: SamplingParams,
                 max_new_tokens: int, eos_ids: set[int], tokenizer, generator: torch.Generator,
                 depth: int | None = None):
        self.request_id = request_id
        self.depth = depth  # the depth it must run at (None: any)
        self.prompt = prompt
        self.prompt_ids = prompt_ids
        self.params = params
        self.max_new_tokens = max_new_tokens
        self.eos_ids = set() if params.ignore_eos else eos_ids
        self.stop_ids = set(params.stop_token_ids)
        self.generator = generator
        self.status = Status.WAITING
        self.slot: int | None = None
        self.num_computed = 0
        self.output_ids: list[int] = []
        self.logprobs: list[TokenLogprobs] | None = [] if params.logprobs is not None else None
        self.cumulative_logprob = 0.0
        self.prompt_logprobs: list[TokenLogprobs | None] | None = \
            [None] if params.prompt_logprobs is not None else None
        self.detok = IncrementalDetokenizer(tokenizer, prompt_ids) if tokenizer is not None else None
        self.stops = StopStringMatcher(params.stop_strings, params.include_stop_str_in_output)
        self.text = ""
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.error: str | None = None
        self.metrics = RequestMetrics(arrival_time=time.monotonic())
        self._sent_tokens = 0
        self._sent_chars = 0

    # progress ------------------------------------------------------------------------------------
    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def prefilling(self) -> bool:
        return self.num_computed < self.prompt_len

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def token_at(self, position: int) -> int:
        p = self.prompt_len
        return self.prompt_ids[position] if position < p else self.output_ids[position - p]

    def append_token(self, token: int, logprobs: TokenLogprobs | None) -> None:
        """Record a sampled token and finish the request if a stop condition is met."""
        now = time.monotonic()
        if self.metrics.first_token_time is None:
            self.metrics.first_token_time = now
        self.output_ids.append(token)
        if self.logprobs is not None and logprobs is not None:
            self.logprobs.append(logprobs)
            self.cumulative_logprob += logprobs[token]
        reason = None
        if token in self.stop_ids:
            reason, self.stop_reason = "stop", token
        elif token in self.eos_ids:
            reason = "stop"
        elif len(self.output_ids) >= self.max_new_tokens:
            reason = "length"
        if self.detok is not None:
            new = self.detok.add(token)
            if reason is not None:
                new += self.detok.flush()  # the last token may end in an incomplete character
            self.text += new
            hit = self.stops.find(self.text, len(new))
            if hit is not None:
                self.text, self.stop_reason = hit
                return self.finish("stop")
        if reason is not None:
            self.finish(reason)

    def finish(self, reason: str, error: str | None = None) -> None:
        self.status = Status.FINISHED
        self.finish_reason = reason
        self.error = error
        self.metrics.finished_time = time.monotonic()

    # outputs -------------------------------------------------------------------------------------
    def snapshot(self) -> RequestOutput:
        """The output so far; the `new_*` fields hold what changed since the previous snapshot."""
        done = self.finished
        visible = len(self.text) if done else len(self.text) - self.stops.holdback(self.text)
        visible = max(visible, self._sent_chars)
        completion = CompletionOutput(
            index=0, text=self.text[:visible], token_ids=list(self.output_ids),
            logprobs=list(self.logprobs) if self.logprobs is not None else None,
            cumulative_logprob=self.cumulative_logprob if self.logprobs is not None else None,
            finish_reason=self.finish_reason, stop_reason=self.stop_reason,
            new_text=self.text[self._sent_chars:visible], new_token_ids=self.output_ids[self._sent_tokens:])
        self._sent_chars, self._sent_tokens = visible, len(self.output_ids)
        return RequestOutput(
            request_id=self.request_id, prompt=self.prompt, prompt_token_ids=self.prompt_ids,
            outputs=[completion], finished=done,
            prompt_logprobs=list(self.prompt_logprobs) if self.prompt_logprobs is not None else None,
            metrics=self.metrics, error=self.error)
