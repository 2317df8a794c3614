"""Rows of retrieval episodes followed by text, with their answer masks.

The one implementation behind the trainer's episode rows (`dsla_serve.trainer.episodes`) and the
teacher recipe's batch mixture (`recipes/teacher/batches.py`):

    make = passkey_maker(PasskeyBuilder(tokenizer, documents), min_len=256, max_len=4096)
    ids, answers = episode_row(make, fill, seq_len=4096, eos=tokenizer.eos_token_id, rng=rng)

A maker is `rng -> (ids [n] int64, answer spans [(start, length)])`, one episode; `fill(n, rng)`
returns n tokens of text. A row is: the episode, EOS, then text up to `seq_len` (with `pack`, as many
whole episodes as fit, each followed by EOS, before the text). `answers` [seq_len] bool is True at
the answer tokens of the episodes only (the passkey digits, the recalled values).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .passkey import PasskeyBuilder
from .recall import build_recall_episode

Episode = tuple[np.ndarray, Sequence[tuple[int, int]]]  # (ids [n] int64, answer spans (start, length))
Maker = Callable[[np.random.Generator], Episode]
Fill = Callable[[int, np.random.Generator], np.ndarray]  # (n, rng) -> n text tokens


def episode_row(make: Maker, fill: Fill, seq_len: int, eos: int, rng: np.random.Generator,
                pack: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(ids [seq_len] int64, answers [seq_len] bool): episodes from `make`, each followed by EOS, then
    `fill` text up to seq_len. With `pack` as many whole episodes as fit, else one. An episode longer
    than the row is cut at seq_len (its answers with it); the trainer's makers never build one."""
    n = seq_len
    parts, answers, pos = [], np.zeros(n, dtype=bool), 0
    while pos < n - 1:
        episode, spans = make(rng)
        if parts and pos + len(episode) > n:
            break
        episode = np.asarray(episode[:n - pos], dtype=np.int64)
        for start, length in spans:
            answers[pos + start:min(pos + start + length, n)] = True
        parts.append(episode)
        pos += len(episode)
        if pos < n:
            parts.append(np.array([eos], dtype=np.int64))
            pos += 1
        if not pack:
            break
    if pos < n:
        parts.append(np.asarray(fill(n - pos, rng), dtype=np.int64))
    return np.concatenate(parts), answers


def passkey_maker(builder: PasskeyBuilder, min_len: int, max_len: int) -> Maker:
    """Passkey episodes of a length drawn uniformly from [min_len, max_len] tokens."""
    def make(rng: np.random.Generator) -> Episode:
        ep = builder.build(int(rng.integers(min_len, max_len + 1)), rng)
        return ep.input_ids, [(ep.answer_start, ep.answer_length)]
    return make


def recall_maker(tokenizer, pairs: tuple[int, int], max_len: int | None = None) -> Maker:
    """Associative-recall episodes of k word:number pairs, k drawn uniformly from [pairs[0], pairs[1]].

    With `max_len`, an episode longer than max_len tokens is drawn again with one pair fewer (down to
    one pair), so the episode fits a row of max_len tokens whenever a one-pair episode does.
    """
    def make(rng: np.random.Generator) -> Episode:
        k = int(rng.integers(pairs[0], pairs[1] + 1))
        ep = build_recall_episode(tokenizer, k, rng)
        while max_len is not None and len(ep.input_ids) > max_len and k > 1:
            k -= 1
            ep = build_recall_episode(tokenizer, k, rng)
        return ep.input_ids, ep.answer_spans
    return make


def recall_length(tokenizer, num_pairs: int, samples: int = 8, seed: int = 0) -> int:
    """The longest of `samples` seeded recall episodes of `num_pairs` pairs, in tokens (a length
    estimate that depends only on the tokenizer, for fitting the pair range to a row)."""
    rng = np.random.default_rng([seed, num_pairs, 11])
    return max(len(build_recall_episode(tokenizer, num_pairs, rng).input_ids) for _ in range(samples))
