"""Retrieval episodes in the trainer's batches (config `data.episodes`).

    episodes = TrainingEpisodes.build(cfg.data.episodes, tokenizer, data, cfg.data.seq_len, seed=cfg.seed,
                                      held_out_rows=32, batch_size=8)
    ids, answers = episodes.mix(rows, positions, seed)   # rows [B, T] text -> [B, T] ids, [B, T] bool
    episodes.held_out                                     # [(ids [b, T], answers [b, T])], validation only

A training row at stream position p (`distill.BatchSchedule`) becomes, with probability
`passkey_fraction`, a passkey episode (a number stated in a passage of training text, asked for at
the end), with probability `recall_fraction` an associative-recall episode (word:number pairs, then
every word again), else it stays text. An episode row is the episode, EOS, then the first tokens of
the text row it replaces (`dsla_serve.quality.episodes.episode_row`). The choice and the episode
depend only on (seed, p), so a row is the same whatever the number of processes.

Episodes come from the tokenizer and documents of their split: training episodes from the training
documents, the held-out ones (for `retrieval_delta` and the `val_answer_kl` metric) from the
validation documents only. Every episode fits the row: a passkey episode is drawn between
`passkey_min_len` (default min(256, seq_len // 2)) and seq_len tokens, raised to the shortest
possible episode; a recall episode draws fewer pairs when the drawn number does not fit. A kind whose
shortest episode is longer than seq_len is left out (its rows stay text) and `info` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..quality.episodes import Maker, episode_row, passkey_maker, recall_length, recall_maker
from ..quality.passkey import PasskeyBuilder

if TYPE_CHECKING:  # pydantic-free at run time: the GPU image imports these modules without it
    from .config import EpisodeConfig
    from .data import PackedData

DEFAULT_PASSKEY_MIN_LEN = 256


def split_at_eos(packed: torch.Tensor, eos: int) -> list[np.ndarray]:
    """The documents of a packed split [N, L] (joined by EOS when packed): a list of token arrays,
    views of the packed tensor, empty pieces dropped."""
    stream = packed.reshape(-1).numpy()
    pieces = np.split(stream, np.flatnonzero(stream == eos) + 1)  # each ends with its EOS but the last
    docs = [p[:-1] if len(p) and p[-1] == eos else p for p in pieces]
    return [d for d in docs if len(d)]


@dataclass(frozen=True)
class EpisodePlan:
    """The episode settings resolved for one tokenizer and row length (fractions 0: kind left out).

    passkey_len, recall_pairs: (lo, hi) inclusive ranges, None for a kind left out; notes: why a kind
    was left out or its range narrowed.
    """

    passkey_fraction: float
    recall_fraction: float
    passkey_len: tuple[int, int] | None
    recall_pairs: tuple[int, int] | None
    notes: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.passkey_fraction + self.recall_fraction > 0

    def to_info(self) -> dict:
        return {"passkey_fraction": self.passkey_fraction, "recall_fraction": self.recall_fraction,
                "passkey_len": list(self.passkey_len) if self.passkey_len else None,
                "recall_pairs": list(self.recall_pairs) if self.recall_pairs else None, "notes": list(self.notes)}


def plan_episodes(cfg: EpisodeConfig, tokenizer, seq_len: int, longest_document: int) -> EpisodePlan:
    """Fit `cfg` to rows of `seq_len` tokens and filler documents of at most `longest_document` tokens."""
    notes: list[str] = []
    passkey_len = recall_pairs = None
    fp, fr = cfg.passkey_fraction, cfg.recall_fraction
    if fp > 0:
        shortest = PasskeyBuilder(tokenizer, [np.zeros(1, dtype=np.int64)]).min_length()
        hi = min(seq_len, shortest + longest_document)  # the filler is a window of one document
        lo = cfg.passkey_min_len if cfg.passkey_min_len is not None else min(DEFAULT_PASSKEY_MIN_LEN, seq_len // 2)
        if shortest > seq_len:
            notes.append(f"passkey left out: its shortest episode has {shortest} tokens, more than data.seq_len="
                         f"{seq_len}")
            fp = 0.0
        else:
            passkey_len = (min(max(lo, shortest), hi), hi)
    if fr > 0:
        lo, hi = cfg.recall_pairs
        if recall_length(tokenizer, 1) > seq_len:
            notes.append(f"recall left out: a one-pair episode has {recall_length(tokenizer, 1)} tokens, more than "
                         f"data.seq_len={seq_len}")
            fr = 0.0
        else:
            fits = lambda k: recall_length(tokenizer, k) <= seq_len  # noqa: E731
            if not fits(hi):
                a, b = 1, hi  # the largest k that fits, by bisection (fits(a) is true, fits(b) false)
                while b - a > 1:
                    a, b = ((a + b) // 2, b) if fits((a + b) // 2) else (a, (a + b) // 2)
                notes.append(f"recall pairs {cfg.recall_pairs[0]}-{cfg.recall_pairs[1]} narrowed to at most {a} "
                             f"(data.seq_len={seq_len})")
                lo, hi = min(lo, a), a
            recall_pairs = (lo, hi)
    return EpisodePlan(fp, fr, passkey_len, recall_pairs, tuple(notes))


class EpisodeRows:
    """Episode rows from one split's documents: `row(kind, text, rng)` -> (ids [T], answers [T])."""

    def __init__(self, plan: EpisodePlan, tokenizer, documents: list[np.ndarray], seq_len: int):
        self.plan, self.seq_len = plan, seq_len
        self.eos = int(tokenizer.eos_token_id)
        self.makers: dict[str, Maker] = {}
        if plan.passkey_len is not None:
            usable = [d for d in documents if len(d)]
            if not usable:
                raise ValueError("passkey episodes need a non-empty document in the split")
            self.makers["passkey"] = passkey_maker(PasskeyBuilder(tokenizer, usable), *plan.passkey_len)
        if plan.recall_pairs is not None:
            self.makers["recall"] = recall_maker(tokenizer, plan.recall_pairs, max_len=seq_len)

    def kind(self, u: float) -> str:
        """'passkey', 'recall' or 'text' for a uniform draw u in [0, 1)."""
        p = self.plan
        return "passkey" if u < p.passkey_fraction else "recall" if u < p.passkey_fraction + p.recall_fraction \
            else "text"

    def row(self, kind: str, text: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """An episode of `kind`, EOS, then the head of `text` [>= seq_len]: (ids [T] int64, answers [T] bool)."""
        return episode_row(self.makers[kind], lambda n, _: text[:n], self.seq_len, self.eos, rng)


@dataclass
class TrainingEpisodes:
    """Training episode rows (from training documents) and held-out episode batches (validation only)."""

    plan: EpisodePlan
    train_rows: EpisodeRows | None
    held_out: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.plan.active

    def info(self) -> dict:
        return {**self.plan.to_info(), "held_out_rows": sum(int(ids.shape[0]) for ids, _ in self.held_out)}

    @classmethod
    def build(cls, cfg: EpisodeConfig, tokenizer, data: PackedData, seq_len: int, *, seed: int,
              held_out_rows: int, batch_size: int) -> "TrainingEpisodes":
        """Plan the episodes for this tokenizer and row length, and build `held_out_rows` episode rows
        from the validation split (in batches of `batch_size`); an inactive plan builds nothing."""
        eos = tokenizer.eos_token_id
        if (cfg.passkey_fraction > 0 or cfg.recall_fraction > 0) and eos is None:
            raise ValueError("data.episodes needs a tokenizer with an EOS token (it ends each episode); "
                             "set data.episodes.passkey_fraction and recall_fraction to 0")
        train = data.base_train if data.base_train is not None else data.train
        train_docs = split_at_eos(train, eos) if eos is not None else []
        val_docs = split_at_eos(data.val, eos) if eos is not None else []
        longest = min(max(map(len, train_docs), default=0), max(map(len, val_docs), default=0))
        plan = plan_episodes(cfg, tokenizer, seq_len, longest)
        if not plan.active:
            return cls(plan, None)
        val_rows = EpisodeRows(plan, tokenizer, val_docs, seq_len)
        return cls(plan, EpisodeRows(plan, tokenizer, train_docs, seq_len),
                   held_out_batches(val_rows, data.val, held_out_rows, batch_size, seed))

    def mix(self, rows: torch.Tensor, positions, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """rows [B, T] int64 text at stream `positions` [B] -> (ids [B, T] int64, answers [B, T] bool)."""
        answers = torch.zeros(rows.shape, dtype=torch.bool)
        if self.train_rows is None:
            return rows, answers
        out = rows.clone()
        for i, p in enumerate(positions):
            rng = np.random.default_rng([seed, int(p)])
            kind = self.train_rows.kind(float(rng.random()))
            if kind != "text":
                ids, mask = self.train_rows.row(kind, rows[i].numpy(), rng)
                out[i], answers[i] = torch.from_numpy(ids), torch.from_numpy(mask)
        return out, answers


def held_out_batches(rows: EpisodeRows, val: torch.Tensor, count: int, batch_size: int,
                     seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` episode rows (every one an episode; kinds in proportion to their fractions) built from
    validation documents and filled with validation text `val` [M, T]: [(ids [b, T], answers [b, T])]."""
    p = rows.plan
    rng = np.random.default_rng([seed, 2**31 - 1])
    built = []
    for i in range(count):
        kind = rows.kind(float(rng.random()) * (p.passkey_fraction + p.recall_fraction))
        built.append(rows.row(kind, val[i % val.shape[0]].numpy(), rng))
    return [(torch.from_numpy(np.stack([ids for ids, _ in built[s:s + batch_size]])),
             torch.from_numpy(np.stack([mask for _, mask in built[s:s + batch_size]])))
            for s in range(0, count, batch_size)]
