"""What crosses a process boundary to or from a replica: one dataclass per message, imported by both sides.

    ingress      -> replica        GenerateRequest     one request: prompt token ids and sampling
    replica      -> ingress        StreamDelta         what is new in the request's output (a stream of them)
    replica      -> policy actor   ReplicaReport       the replica's engine stats, every report interval
    policy actor -> replica        ReplicaTargets      the depth to serve at and how many layers are published

Dataclasses, not pydantic models: the replica side imports no pydantic (the GPU image lacks it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .sampling import SamplingParams

TokenLogprobs = dict[int, float]  # token id -> log-probability: the chosen token and the top n


@dataclass(frozen=True)
class TokenText:
    """One token as a log-probability response names it.

    raw: the token's own bytes (a byte-level token may hold part of a UTF-8 character).
    text: `raw` as text when it is valid UTF-8, else "bytes:\\xe2\\x80" (OpenAI's spelling of such a token),
        so that distinct byte tokens never share a text.
    """

    text: str
    raw: bytes


@dataclass(frozen=True)
class GenerateRequest:
    """One prompt to run. The ingress tokenized it; the engine checks the ids against its vocabulary
    (the one check). `return_prompt_text`: decode the prompt into the first delta's `prompt_text`.
    `depth`: serve it at exactly this depth or not at all (a request naming `MODEL@dN`); None: at the
    replica's depth."""

    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    return_prompt_text: bool = False
    depth: int | None = None


@dataclass(frozen=True)
class StreamDelta:
    """What is new in one request's output since its previous delta. Text is decoded here, once: the
    ingress neither detokenizes nor decodes token ids.

    token_ids / text: the new tokens and the new text (text may lag tokens by an incomplete character
        or a possible stop string).
    logprobs: one {token id: log-probability} per new token, when asked (else None).
    prompt_logprobs: first delta only, with echo: None for the first prompt token, then one entry per token.
    prompt_text: first delta only, when the request asked for it: the prompt decoded.
    token_texts: the `TokenText` of every token id that `token_ids` with logprobs, `logprobs` and
        `prompt_logprobs` name (and the prompt's ids with prompt_logprobs), for logprob responses.
    prompt_tokens: the prompt's length in tokens. depth: the engine's depth when it produced this.
    finish_reason: None while running, else "stop", "length", "abort" or "error" (then `error` says why).
    """

    request_id: str
    token_ids: list[int]
    text: str
    prompt_tokens: int
    depth: int
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    error: str | None = None
    logprobs: list[TokenLogprobs] | None = None
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    prompt_text: str | None = None
    token_texts: dict[int, TokenText] = field(default_factory=dict)

    @property
    def has_content(self) -> bool:
        """Whether it tells the client anything (new tokens or text, the end, or prompt log-probabilities)."""
        return bool(self.token_ids or self.text or self.finish_reason or self.prompt_logprobs is not None)


@dataclass(frozen=True)
class EngineStats:
    """An engine's load and latency figures (`Engine.stats()`).

    depth / pending_depth / draining: the depth served now, the one it drains towards (else None).
    max_depth: converted layers loaded (depths 0..max_depth are available).
    running / waiting: requests in slots / queued; queue_cap: the most that may wait.
    max_num_seqs: slots; max_model_len: tokens per slot.
    cache_usage: slots in use / slots; cache_token_usage: tokens cached / (slots x max_model_len).
    cuda_graphs: "on", "off" (CPU, or turned off) or "failed: <why>" (capture failed; decoding runs eagerly).
    ttft_*_s, tpot_*_s: percentiles over the last 512 finished requests (None before any).
    tokens_per_s: generated over the last 10 s; the counters are since the engine started.
    """

    depth: int
    pending_depth: int | None
    draining: bool
    max_depth: int
    running: int
    waiting: int
    queue_cap: int
    max_num_seqs: int
    max_model_len: int
    cache_usage: float
    cache_token_usage: float
    cuda_graphs: str
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    tpot_p50_s: float | None
    tpot_p95_s: float | None
    tokens_per_s: float
    requests_total: int
    completed: int
    failed: int
    aborted: int
    generated_tokens: int

    @property
    def available_depths(self) -> list[int]:
        return list(range(self.max_depth + 1))


@dataclass(frozen=True)
class ReplicaReport:
    """One replica of a pool, as it reports itself: its engine's stats and the layers it started with
    (`started_max_depth`; later layers were loaded without a restart)."""

    pool: str
    replica_id: str
    started_max_depth: int
    engine: EngineStats


@dataclass(frozen=True)
class ReplicaTargets:
    """The policy actor's answer to a report: serve at `depth` (never beyond the quality floor) and
    hold `artifact_depth` published layers of the artifact at `artifact`; `version` changes with them."""

    depth: int
    artifact_depth: int
    artifact: str | None
    version: int
