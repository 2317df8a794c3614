"""Passkey episodes: a number stated early in a long passage of book text, asked for at the end.

Layout of an episode of exactly `length` tokens (all pieces tokenized separately, then joined):

    filler[:p]  STATEMENT  filler[p:]  QUESTION  ANSWER
    STATEMENT = " The pass key is 71432. Remember it. 71432 is the pass key."
    QUESTION  = " What is the pass key? The pass key is"
    ANSWER    = " 71432"

The filler is a window of one book's tokens; p is a seeded fraction (`depth`) of the filler length.
The same builder makes training episodes (from training books) and evaluation episodes (from held-out
books, seeded, so every model sees the same episodes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATEMENT = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
ANSWER = " {key}"
DEFAULT_DEPTH_RANGE = (0.0, 0.5)


@dataclass(frozen=True)
class PasskeyEpisode:
    """One episode. `input_ids` holds the whole sequence, answer included (length = the context)."""

    input_ids: np.ndarray  # [length] int64
    passkey: str
    statement_start: int  # index of the first token of STATEMENT
    answer_start: int  # index of the first ANSWER token
    answer_length: int

    @property
    def answer_ids(self) -> np.ndarray:
        return self.input_ids[self.answer_start:self.answer_start + self.answer_length]


def _ids(tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer.encode(text, add_special_tokens=False), dtype=np.int64)


class PasskeyBuilder:
    """Builds passkey episodes for one tokenizer from a list of filler documents (token arrays)."""

    def __init__(self, tokenizer, documents: list[np.ndarray], digits: int = 5,
                 depth_range: tuple[float, float] = DEFAULT_DEPTH_RANGE):
        if not documents:
            raise ValueError("passkey episodes need at least one filler document")
        if not 0.0 <= depth_range[0] <= depth_range[1] <= 1.0:
            raise ValueError(f"depth_range must satisfy 0 <= lo <= hi <= 1, got {depth_range}")
        self.tokenizer = tokenizer
        self.documents = [np.asarray(d) for d in documents]
        self._lengths = np.asarray([len(d) for d in self.documents])
        self.digits = digits
        self.depth_range = depth_range
        self.question = _ids(tokenizer, QUESTION)

    def min_length(self) -> int:
        """The shortest episode possible (no filler)."""
        key = "9" * self.digits
        return len(_ids(self.tokenizer, STATEMENT.format(key=key))) + len(self.question) + \
            len(_ids(self.tokenizer, ANSWER.format(key=key)))

    def build(self, length: int, rng: np.random.Generator) -> PasskeyEpisode:
        """An episode of exactly `length` tokens drawn with `rng` (key, filler window, depth)."""
        key = str(int(rng.integers(10 ** (self.digits - 1), 10 ** self.digits)))
        statement = _ids(self.tokenizer, STATEMENT.format(key=key))
        answer = _ids(self.tokenizer, ANSWER.format(key=key))
        n_fill = length - len(statement) - len(self.question) - len(answer)
        if n_fill < 0:
            raise ValueError(f"a passkey episode needs at least {self.min_length()} tokens, asked for {length}")
        long_enough = np.flatnonzero(self._lengths >= n_fill)  # in document order, as the draw below needs
        if not len(long_enough):
            raise ValueError(f"no filler document has the {n_fill} tokens a {length}-token episode needs "
                             f"(longest: {int(self._lengths.max())})")
        doc = self.documents[int(long_enough[int(rng.integers(len(long_enough)))])]
        offset = int(rng.integers(len(doc) - n_fill + 1))
        filler = np.asarray(doc[offset:offset + n_fill], dtype=np.int64)
        depth = float(rng.uniform(*self.depth_range))
        p = int(depth * n_fill)
        ids = np.concatenate([filler[:p], statement, filler[p:], self.question, answer])
        return PasskeyEpisode(ids, key, statement_start=p, answer_start=length - len(answer),
                              answer_length=len(answer))


def passkey_episodes(tokenizer, documents: list[np.ndarray], length: int, count: int, seed: int,
                     **builder_kwargs) -> list[PasskeyEpisode]:
    """`count` evaluation episodes of `length` tokens; the same (seed, length, documents) give the same ones."""
    builder = PasskeyBuilder(tokenizer, documents, **builder_kwargs)
    rng = np.random.default_rng([seed, length])
    return [builder.build(length, rng) for _ in range(count)]
