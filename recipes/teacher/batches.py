"""Training batches of the teacher: book text with passkey and associative-recall episodes mixed in.

A batch depends only on (seed, step), never on what came before, so a resumed run sees exactly the
batches an uninterrupted run would, and every run of the recipe trains on the same data.

Each row is `seq_len` tokens. With probability `passkey_fraction` it starts with a passkey episode of
a random length in [passkey_min_len, L] (filler from training books), with probability
`recall_fraction` with an associative-recall episode of a random number of pairs; the rest of such a
row, after an EOS, and every other row are a random window of the training stream (books joined by
EOS). L grows linearly from passkey_min_len to seq_len over the first `passkey_ramp_steps` steps
(short episodes first: copying is learnt at short range, then stretched).

A batch also marks its answer tokens (the passkey digits asked for at the end, the recalled values):
they are a few dozen of the batch's ~65k tokens, so the trainer weights their loss separately.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dsla_serve.quality.passkey import PasskeyBuilder
from dsla_serve.quality.recall import build_recall_episode


@dataclass(frozen=True)
class MixtureConfig:
    seq_len: int = 4096
    batch_size: int = 16
    passkey_fraction: float = 0.25
    passkey_min_len: int = 256
    recall_fraction: float = 0.1
    recall_pairs: tuple[int, int] = (4, 64)
    passkey_ramp_steps: int = 0
    seed: int = 0

    def __post_init__(self):
        if not (0 <= self.passkey_fraction and 0 <= self.recall_fraction
                and self.passkey_fraction + self.recall_fraction <= 1):
            raise ValueError(f"passkey_fraction ({self.passkey_fraction}) and recall_fraction "
                             f"({self.recall_fraction}) must be >= 0 and sum to at most 1")
        if not 0 < self.passkey_min_len <= self.seq_len:
            raise ValueError(f"passkey_min_len must be in (0, seq_len={self.seq_len}], got {self.passkey_min_len}")
        if self.passkey_ramp_steps < 0:
            raise ValueError(f"passkey_ramp_steps must be >= 0, got {self.passkey_ramp_steps}")


class BatchMixture:
    """`batch(step)` -> (input_ids [B, seq_len] int64, kinds [B] of 'text' | 'passkey' | 'recall',
    answers [B, seq_len] bool: True at the answer tokens of the episodes)."""

    def __init__(self, tokenizer, stream: np.ndarray, documents: list[np.ndarray], config: MixtureConfig):
        if len(stream) <= config.seq_len:
            raise ValueError(f"the training stream has {len(stream)} tokens, fewer than one {config.seq_len}-token row")
        self.tokenizer = tokenizer
        self.stream = stream
        self.config = config
        self.eos = int(tokenizer.eos_token_id)
        self.passkeys = PasskeyBuilder(tokenizer, documents)
        if config.passkey_fraction > 0 and self.passkeys.min_length() > config.passkey_min_len:
            raise ValueError(f"passkey_min_len {config.passkey_min_len} is below the shortest possible episode "
                             f"({self.passkeys.min_length()} tokens)")

    def _text(self, n: int, rng: np.random.Generator) -> np.ndarray:
        start = int(rng.integers(len(self.stream) - n + 1))
        return np.asarray(self.stream[start:start + n], dtype=np.int64)

    def _episode_row(self, episode: np.ndarray, spans, kind: str,
                     rng: np.random.Generator) -> tuple[np.ndarray, str, np.ndarray]:
        """The episode, then EOS and book text up to seq_len; answers marks the (start, length) spans."""
        n = self.config.seq_len
        episode = episode[:n]
        answers = np.zeros(n, dtype=bool)
        for start, length in spans:
            answers[start:min(start + length, n)] = True
        if len(episode) >= n - 1:
            return np.concatenate([episode, self._text(n - len(episode), rng)]), kind, answers
        return np.concatenate([episode, [self.eos], self._text(n - len(episode) - 1, rng)]), kind, answers

    def passkey_max_len(self, step: int) -> int:
        """The longest passkey episode drawn at `step` (the short-to-long ramp)."""
        c = self.config
        if c.passkey_ramp_steps <= 0 or step >= c.passkey_ramp_steps:
            return c.seq_len
        return c.passkey_min_len + (c.seq_len - c.passkey_min_len) * (step + 1) // c.passkey_ramp_steps

    def row(self, rng: np.random.Generator, step: int = 0) -> tuple[np.ndarray, str, np.ndarray]:
        c = self.config
        u = rng.random()
        if u < c.passkey_fraction:
            length = int(rng.integers(c.passkey_min_len, self.passkey_max_len(step) + 1))
            ep = self.passkeys.build(length, rng)
            return self._episode_row(ep.input_ids, [(ep.answer_start, ep.answer_length)], "passkey", rng)
        if u < c.passkey_fraction + c.recall_fraction:
            pairs = int(rng.integers(c.recall_pairs[0], c.recall_pairs[1] + 1))
            ep = build_recall_episode(self.tokenizer, pairs, rng)
            return self._episode_row(ep.input_ids, ep.answer_spans, "recall", rng)
        return self._text(c.seq_len, rng), "text", np.zeros(c.seq_len, dtype=bool)

    def batch(self, step: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        rng = np.random.default_rng([self.config.seed, step])
        rows, kinds, answers = zip(*(self.row(rng, step) for _ in range(self.config.batch_size)))
        return torch.from_numpy(np.stack(rows)), list(kinds), torch.from_numpy(np.stack(answers))
