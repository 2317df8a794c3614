"""What requests ask for: prompts cut from a corpus to lengths drawn from a distribution, and output lengths.

    lengths = Lengths.parse("lognormal:128:0.5")        # or "fixed:128", "uniform:32:256"
    corpus = Corpus.from_files(["book.txt"], tokenize)  # token ids through the endpoint's /tokenize
    prompt = corpus.prompt(n_tokens, rng)               # n consecutive corpus tokens (ids, or text when
                                                        # the endpoint cannot tokenize: ~4 characters a token)
    planned = plan_requests(arrivals, corpus, lengths, Lengths.parse(32), seed=0)   # what each arrival sends

Prompts as token ids have exactly the length asked for on any OpenAI-compatible server that accepts
token-id prompts (vLLM, DSLA-Serve); the text fallback is approximate, and the report gives the lengths
the server counted (`usage.prompt_tokens`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .arrivals import Arrival

CHARS_PER_TOKEN = 4  # the text fallback's guess
TOKENIZE_CHUNK_CHARS = 200_000


@dataclass(frozen=True)
class Lengths:
    """A distribution of token counts: `fixed:N`, `uniform:LOW:HIGH` or `lognormal:MEDIAN:SIGMA`, clipped
    to [1, `cap`]."""

    kind: str
    a: float
    b: float = 0.0
    cap: int = 1 << 20

    @classmethod
    def parse(cls, spec: str | int, cap: int = 1 << 20) -> Lengths:
        parts = str(spec).split(":")
        try:
            if len(parts) == 1:
                return cls("fixed", float(parts[0]), cap=cap)
            kind, numbers = parts[0], [float(x) for x in parts[1:]]
            if kind == "fixed" and len(numbers) == 1:
                return cls(kind, numbers[0], cap=cap)
            if kind in ("uniform", "lognormal") and len(numbers) == 2:
                return cls(kind, numbers[0], numbers[1], cap=cap)
        except ValueError:
            pass
        raise ValueError(f"length distribution {spec!r}: expected N, fixed:N, uniform:LOW:HIGH or "
                         "lognormal:MEDIAN:SIGMA")

    def draw(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            value = self.a
        elif self.kind == "uniform":
            value = rng.uniform(self.a, self.b)
        else:
            value = self.a * math.exp(rng.gauss(0.0, self.b))
        return max(1, min(self.cap, round(value)))

    def __str__(self) -> str:
        return f"{self.kind}:{self.a:g}" + (f":{self.b:g}" if self.kind != "fixed" else "")


@dataclass
class Corpus:
    """The text prompts are cut from, as token ids (`ids`) or, failing a tokenizer, as text."""

    ids: list[int] | None
    text: str

    @classmethod
    def from_files(cls, paths: list[str | Path], tokenize: Callable[[str], list[int]] | None) -> Corpus:
        text = "\n".join(Path(p).read_text(encoding="utf-8", errors="replace") for p in paths)
        text = " ".join(text.split())  # one line of words: any cut is a plausible prompt
        if not text:
            raise ValueError(f"the corpus {', '.join(map(str, paths))} is empty")
        ids = None
        if tokenize is not None:
            ids = []
            for start in range(0, len(text), TOKENIZE_CHUNK_CHARS):
                ids += tokenize(text[start:start + TOKENIZE_CHUNK_CHARS])
        return cls(ids, text)

    def prompt(self, tokens: int, rng: random.Random) -> list[int] | str:
        """`tokens` consecutive tokens from a random place (the corpus repeats if it is shorter)."""
        if self.ids is not None:
            start = rng.randrange(len(self.ids))
            return [self.ids[(start + i) % len(self.ids)] for i in range(tokens)]
        chars = tokens * CHARS_PER_TOKEN
        start = rng.randrange(len(self.text))
        return "".join(self.text[(start + i) % len(self.text)] for i in range(chars))


@dataclass(frozen=True)
class PlannedRequest:
    """What one arrival sends: its prompt (token ids, or text) and the output tokens it asks for."""

    arrival: Arrival
    prompt: list[int] | str
    max_tokens: int


def plan_requests(arrivals: list[Arrival], corpus: Corpus, prompt_tokens: Lengths, output_tokens: Lengths,
                  seed: int, duration_s: float = math.inf) -> list[PlannedRequest]:
    """The requests of the arrivals up to `duration_s`, in order: lengths from the arrival (a trace's) or
    drawn from the distributions, prompts cut from the corpus, all from one generator seeded `seed`, so
    the same arrivals and seed send the same requests to every server."""
    rng = random.Random(seed)
    return [PlannedRequest(a, corpus.prompt(a.prompt_tokens or prompt_tokens.draw(rng), rng),
                           a.output_tokens or output_tokens.draw(rng))
            for a in arrivals if a.at <= duration_s]
