"""Training batches of the teacher: book text with passkey and associative-recall episodes mixed in.

A batch depends only on (seed, step), never on what came before, so a resumed run sees exactly the
batches an uninterrupted run would, and every run of the recipe trains on the same data.

Each row is `seq_len` tokens. With probability `passkey_fraction` it starts with a passkey episode of
a random length in [passkey_min_len, seq_len] (filler from training books), with probability
`recall_fraction` with an associative-recall episode of a random number of pairs; the rest of such a
row, after an EOS, and every other row are a random window of the training stream (books joined by
EOS). The loss is next-token cross-entropy on every position.
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
    seed: int = 0

    def __post_init__(self):
        if not (0 <= self.passkey_fraction and 0 <= self.recall_fraction
                and self.passkey_fraction + self.recall_fraction <= 1):
            raise ValueError(f"passkey_fraction ({self.passkey_fraction}) and recall_fraction "
                             f"({self.recall_fraction}) must be >= 0 and sum to at most 1")
        if not 0 < self.passkey_min_len <= self.seq_len:
            raise ValueError(f"passkey_min_len must be in (0, seq_len={self.seq_len}], got {self.passkey_min_len}")


class BatchMixture:
    """`batch(step)` -> (input_ids [B, seq_len] int64, kinds [B] of 'text' | 'passkey' | 'recall')."""

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

    def _episode_row(self, episode: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = self.config.seq_len
        episode = episode[:n]
        if len(episode) >= n - 1:
            return np.concatenate([episode, self._text(n - len(episode), rng)])
        return np.concatenate([episode, [self.eos], self._text(n - len(episode) - 1, rng)])

    def row(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        c = self.config
        u = rng.random()
        if u < c.passkey_fraction:
            length = int(rng.integers(c.passkey_min_len, c.seq_len + 1))
            return self._episode_row(self.passkeys.build(length, rng).input_ids, rng), "passkey"
        if u < c.passkey_fraction + c.recall_fraction:
            pairs = int(rng.integers(c.recall_pairs[0], c.recall_pairs[1] + 1))
            return self._episode_row(build_recall_episode(self.tokenizer, pairs, rng).input_ids, rng), "recall"
        return self._text(c.seq_len, rng), "text"

    def batch(self, step: int) -> tuple[torch.Tensor, list[str]]:
        rng = np.random.default_rng([self.config.seed, step])
        rows, kinds = zip(*(self.row(rng) for _ in range(self.config.batch_size)))
        return torch.from_numpy(np.stack(rows)), list(kinds)
