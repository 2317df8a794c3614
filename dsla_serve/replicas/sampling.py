"""Sampling parameters of a request (vLLM's names and defaults) and their validation.

Everything is checked when the object is made, so a bad request fails with a `ValueError` that names
the field before it reaches the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field


SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed takes
TOP_K_MAX = 2**31 - 1
TOKEN_ID_MAX = 2**63 - 1


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class SamplingParams:
    """How to generate for one request.

    max_tokens: most tokens to generate (None: up to the context limit). 0 is allowed when only the
        prompt is scored (`echo` / `prompt_logprobs`).
    temperature: 0 = greedy (argmax); otherwise logits are divided by it before sampling.
    top_p: keep the smallest set of most likely tokens whose probability sums to at least top_p (1 = off).
    top_k: keep the k most likely tokens (0 or -1 = off).
    seed: seeds this request's own random generator: the same seed gives the same text whatever else
        is in the batch. None draws a fresh seed.
    stop: strings that end generation; the text is cut before the first one found (kept when
        `include_stop_str_in_output`).
    stop_token_ids: token ids that end generation (the token is kept in `token_ids`).
    ignore_eos: keep generating past the end-of-sequence token.
    logprobs: for each generated token, also return the log-probabilities of the `logprobs` most
        likely tokens (plus the chosen one). Log-probabilities are those of the model's distribution
        (log_softmax of the raw logits), before temperature / top-k / top-p.
    prompt_logprobs: the same for every prompt token (the first has none), in
        `RequestOutput.prompt_logprobs`.
    echo: return the prompt's log-probabilities (as OpenAI's `echo` with `logprobs`, and what
        lm-eval's loglikelihood tasks need): sets `prompt_logprobs` to `logprobs or 0` when it is None.
        The text stays the generated text; a server that echoes prepends the prompt itself.
    """

    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    echo: bool = False
    include_stop_str_in_output: bool = False
    stop_strings: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self):
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 0):
            raise ValueError(f"SamplingParams.max_tokens must be a non-negative int or None, got {self.max_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or isinstance(self.temperature, bool) \
                or not self.temperature >= 0:
            raise ValueError(f"SamplingParams.temperature must be a number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or isinstance(self.top_p, bool) or not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or not -1 <= self.top_k <= TOP_K_MAX:
            raise ValueError(f"SamplingParams.top_k must be an int in [1, {TOP_K_MAX}], or 0 / -1 for no limit, got "
                             f"{self.top_k!r}")
        if self.seed is not None and (not _is_int(self.seed) or not SEED_MIN <= self.seed <= SEED_MAX):
            raise ValueError(f"SamplingParams.seed must be an int in [{SEED_MIN}, {SEED_MAX}] or None, got {self.seed!r}")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"SamplingParams.stop must be a non-empty string or a list of them, got {self.stop!r}")
        self.stop_strings = tuple(stop)
        ids = list(self.stop_token_ids or [])
        if not all(_is_int(t) and 0 <= t <= TOKEN_ID_MAX for t in ids):
            raise ValueError(f"SamplingParams.stop_token_ids must be a list of ints in [0, {TOKEN_ID_MAX}], got "
                             f"{self.stop_token_ids!r}")
        self.stop_token_ids = ids
        for name in ("logprobs", "prompt_logprobs"):
            n = getattr(self, name)
            if n is not None and (not _is_int(n) or n < 0):
                raise ValueError(f"SamplingParams.{name} must be a non-negative int or None, got {n!r}")
        if self.echo and self.prompt_logprobs is None:
            self.prompt_logprobs = self.logprobs or 0
        if self.max_tokens == 0 and self.prompt_logprobs is None:
            raise ValueError("SamplingParams.max_tokens is 0 but nothing asks for prompt log-probabilities "
                             "(set echo=True or prompt_logprobs): the request would do nothing")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def top_k_or_none(self) -> int | None:
        return self.top_k if self.top_k > 0 else None
