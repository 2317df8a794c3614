"""Training batches of the teacher: book text with passkey and associative-recall episodes mixed in.

A batch depends only on (seed, step), never on what came before, so a resumed run sees exactly the
batches an uninterrupted run would, and every run of the recipe trains on the same data.

Each row is `seq_len` tokens. A row starts with episodes of one kind with probability
`passkey_fraction` (a number stated early in a passage of training-book text, asked for at the end),
`recall_fraction` (word:number pairs, then every word again) or `copy_fraction` (n random tokens, then
the same n again: the plainest induction task, from which copying is learnt first); after the
episodes, each followed by EOS, the row is filled with a random window of the training stream (books
joined by EOS), and every other row is such a window alone. With `pack_episodes` a row holds as many
whole episodes of its kind as fit, else one. Passkey lengths are drawn from [passkey_min_len, L],
with L growing linearly from passkey_min_len to seq_len over the first `passkey_ramp_steps` steps.

A batch also marks its answer tokens (the passkey digits asked for at the end, the recalled values,
the second copy): a tiny share of the batch's tokens, so the trainer weights their loss separately.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dsla_serve.quality.episodes import episode_row, passkey_maker, recall_maker
from dsla_serve.quality.passkey import PasskeyBuilder


@dataclass(frozen=True)
class MixtureConfig:
    seq_len: int = 4096
    batch_size: int = 16
    passkey_fraction: float = 0.25
    passkey_min_len: int = 256
    recall_fraction: float = 0.1
    recall_pairs: tuple[int, int] = (4, 64)
    copy_fraction: float = 0.0
    copy_len: tuple[int, int] = (16, 256)
    pack_episodes: bool = False
    passkey_ramp_steps: int = 0
    seed: int = 0

    def __post_init__(self):
        fractions = (self.passkey_fraction, self.recall_fraction, self.copy_fraction)
        if min(fractions) < 0 or sum(fractions) > 1:
            raise ValueError(f"passkey_fraction ({self.passkey_fraction}), recall_fraction ({self.recall_fraction}) "
                             f"and copy_fraction ({self.copy_fraction}) must be >= 0 and sum to at most 1")
        if self.copy_fraction > 0 and not 1 <= self.copy_len[0] <= self.copy_len[1] <= self.seq_len // 2:
            raise ValueError(f"copy_len must satisfy 1 <= lo <= hi <= seq_len / 2, got {self.copy_len}")
        if not 0 < self.passkey_min_len <= self.seq_len:
            raise ValueError(f"passkey_min_len must be in (0, seq_len={self.seq_len}], got {self.passkey_min_len}")
        if self.passkey_ramp_steps < 0:
            raise ValueError(f"passkey_ramp_steps must be >= 0, got {self.passkey_ramp_steps}")


class BatchMixture:
    """`batch(step)` -> (input_ids [B, seq_len] int64, kinds [B] of 'text' | 'passkey' | 'recall' | 'copy',
    answers [B, seq_len] bool: True at the answer tokens of the episodes)."""

    def __init__(self, tokenizer, stream: np.ndarray, documents: list[np.ndarray], config: MixtureConfig):
        if len(stream) <= config.seq_len:
            raise ValueError(f"the training stream has {len(stream)} tokens, fewer than one {config.seq_len}-token row")
        self.tokenizer = tokenizer
        self.stream = stream
        self.config = config
        self.eos = int(tokenizer.eos_token_id)
        self.first_plain_id = 1 + max(i for i in (tokenizer.pad_token_id, tokenizer.bos_token_id, self.eos)
                                      if i is not None)
        self.passkeys = PasskeyBuilder(tokenizer, documents)
        if config.passkey_fraction > 0 and self.passkeys.min_length() > config.passkey_min_len:
            raise ValueError(f"passkey_min_len {config.passkey_min_len} is below the shortest possible episode "
                             f"({self.passkeys.min_length()} tokens)")

    def _text(self, n: int, rng: np.random.Generator) -> np.ndarray:
        start = int(rng.integers(len(self.stream) - n + 1))
        return np.asarray(self.stream[start:start + n], dtype=np.int64)

    def _episode_row(self, make, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, str, np.ndarray]:
        """Episodes from `make(rng) -> (ids, answer spans)`, each followed by EOS, then book text up to
        seq_len (`dsla_serve.quality.episodes.episode_row`). Returns (ids, kind, answers)."""
        ids, answers = episode_row(make, self._text, self.config.seq_len, self.eos, rng, pack=self.config.pack_episodes)
        return ids, kind, answers

    def passkey_max_len(self, step: int) -> int:
        """The longest passkey episode drawn at `step` (the short-to-long ramp)."""
        c = self.config
        if c.passkey_ramp_steps <= 0 or step >= c.passkey_ramp_steps:
            return c.seq_len
        return c.passkey_min_len + (c.seq_len - c.passkey_min_len) * (step + 1) // c.passkey_ramp_steps

    def _passkey(self, rng: np.random.Generator, step: int):
        return passkey_maker(self.passkeys, self.config.passkey_min_len, self.passkey_max_len(step))(rng)

    def _recall(self, rng: np.random.Generator):
        return recall_maker(self.tokenizer, self.config.recall_pairs)(rng)

    def _copy(self, rng: np.random.Generator):
        n = int(rng.integers(self.config.copy_len[0], self.config.copy_len[1] + 1))
        segment = rng.integers(self.first_plain_id, len(self.tokenizer), size=n)
        return np.concatenate([segment, segment]), [(n + 1, n - 1)]

    def row(self, rng: np.random.Generator, step: int = 0) -> tuple[np.ndarray, str, np.ndarray]:
        c = self.config
        u = rng.random()
        if u < c.passkey_fraction:
            return self._episode_row(lambda r: self._passkey(r, step), "passkey", rng)
        if u < c.passkey_fraction + c.recall_fraction:
            return self._episode_row(self._recall, "recall", rng)
        if u < c.passkey_fraction + c.recall_fraction + c.copy_fraction:
            return self._episode_row(self._copy, "copy", rng)
        return self._text(c.seq_len, rng), "text", np.zeros(c.seq_len, dtype=bool)

    def batch(self, step: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        rng = np.random.default_rng([self.config.seed, step])
        rows, kinds, answers = zip(*(self.row(rng, step) for _ in range(self.config.batch_size)))
        return torch.from_numpy(np.stack(rows)), list(kinds), torch.from_numpy(np.stack(answers))


class StepBatches(Dataset):
    """The batches of steps start..stop-1 as a map-style dataset: item i is (input_ids, answers) of step
    start + i, so DataLoader workers can build them ahead of the training loop."""

    def __init__(self, mixture: BatchMixture, start: int, stop: int):
        self.mixture, self.start, self.stop = mixture, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids, _, answers = self.mixture.batch(self.start + i)
        return ids, answers


def prefetched_batches(mixture: BatchMixture, start: int, stop: int, workers: int = 0,
                       pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids [B, T], answers [B, T]) of steps start..stop-1, in step order.

    With workers > 0 the batches are built ahead in that many processes while the accelerator trains:
    building a packed 4096-token batch costs tens of milliseconds of Python, which would otherwise sit
    in series with every step. A batch depends only on its step, so the result is the same either way.
    """
    data = StepBatches(mixture, start, stop)
    if workers <= 0:
        return (data[i] for i in range(len(data)))
    loader = DataLoader(data, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin_memory,
                        prefetch_factor=4, multiprocessing_context="fork")
    return iter(loader)
