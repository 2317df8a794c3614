"""Run the quality tasks on one model: perplexity by position, passkey retrieval, associative recall."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .passkey import DEFAULT_DEPTH_RANGE, passkey_episodes
from .perplexity import DEFAULT_BUCKETS, perplexity
from .recall import recall_episodes
from .scoring import spans_correct

TASKS = ("ppl", "passkey", "mqar")


@dataclass
class EvalSettings:
    """What to measure and how much of it. Episodes are seeded: every model sees the same ones."""

    tasks: tuple[str, ...] = TASKS
    context: int = 4096
    buckets: tuple[tuple[int, int], ...] = DEFAULT_BUCKETS
    max_windows: int | None = 64
    batch_size: int = 4
    passkey_lengths: tuple[int, ...] = (1024, 2048, 4096)
    passkey_episodes: int = 50
    passkey_depth_range: tuple[float, float] = DEFAULT_DEPTH_RANGE
    recall_pairs: tuple[int, ...] = (16, 32, 64)
    recall_episodes: int = 50
    seed: int = 1234
    progress: bool = field(default=True, compare=False)

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
        for name in ("context", "batch_size", "passkey_episodes", "recall_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("progress")
        return d


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad if pad is not None else 0)


def passkey_accuracy(model, tokenizer, documents: list[np.ndarray], settings: EvalSettings) -> dict:
    """{"depth_range", "rows": [{length, episodes, correct, accuracy}]} over `settings.passkey_lengths`."""
    from tqdm.auto import tqdm

    rows = []
    for length in tqdm(settings.passkey_lengths, desc="passkey", unit="length", disable=not settings.progress):
        eps = passkey_episodes(tokenizer, documents, length, settings.passkey_episodes, settings.seed,
                               depth_range=settings.passkey_depth_range)
        ok = spans_correct(model, [e.input_ids for e in eps], [[(e.answer_start, e.answer_length)] for e in eps],
                           _pad_id(tokenizer), settings.batch_size)
        correct = sum(r[0] for r in ok)
        rows.append({"length": length, "episodes": len(eps), "correct": correct, "accuracy": correct / len(eps)})
    return {"depth_range": list(settings.passkey_depth_range), "rows": rows}


def recall_accuracy(model, tokenizer, settings: EvalSettings) -> dict:
    """{"rows": [{pairs, episodes, queries, correct, accuracy, tokens}]}: accuracy is per query."""
    from tqdm.auto import tqdm

    rows = []
    for pairs in tqdm(settings.recall_pairs, desc="mqar", unit="size", disable=not settings.progress):
        eps = recall_episodes(tokenizer, pairs, settings.recall_episodes, settings.seed)
        ok = spans_correct(model, [e.input_ids for e in eps], [list(e.answer_spans) for e in eps],
                           _pad_id(tokenizer), settings.batch_size)
        correct = sum(sum(r) for r in ok)
        queries = sum(len(r) for r in ok)
        rows.append({"pairs": pairs, "episodes": len(eps), "queries": queries, "correct": correct,
                     "accuracy": correct / queries, "tokens": int(max(len(e.input_ids) for e in eps))})
    return {"rows": rows}


def evaluate(model, tokenizer, documents: list[np.ndarray], settings: EvalSettings | None = None) -> dict:
    """All tasks of `settings` on `model` (eval mode is set here). `documents` are held-out token arrays:
    perplexity windows and passkey filler come from them. Returns {task: result, "seconds": ...}."""
    settings = settings or EvalSettings()
    model.eval()
    out, t0 = {}, time.perf_counter()
    if "ppl" in settings.tasks:
        out["perplexity"] = perplexity(model, documents, settings.context, settings.buckets, settings.max_windows,
                                       settings.batch_size, progress=settings.progress)
    if "passkey" in settings.tasks:
        out["passkey"] = passkey_accuracy(model, tokenizer, documents, settings)
    if "mqar" in settings.tasks:
        out["mqar"] = recall_accuracy(model, tokenizer, settings)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out
