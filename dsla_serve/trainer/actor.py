"""`TrainerActor`: the trainer loop in the background of a Ray actor (the only module importing ray).

    actor = TrainerActor.options(num_gpus=1).remote(config_dict_or_yaml_path, subscriber=policy_actor)
    ray.get(actor.start.remote())
    ray.get(actor.progress.remote())   # TrainerProgress(phase='training', layer=5, step=120, loss=0.31, ...)
    ray.get(actor.stop.remote())       # ends between two optimiser steps; published layers stay intact

The loop (`Trainer.run`) runs in a thread of the actor, so `progress` and `stop` answer while it
trains. Each published layer is announced to the subscriber as a `LayerResult` (progress.py): an
actor handle gets `subscriber.on_layer_published.remote(result)` (fire and forget, training never
waits on it), a plain callable is called with it in the training thread (its exceptions are logged,
not raised). Stopping is safe at any moment: the flag is read between optimiser steps, and an artifact
append is atomic anyway, so the artifact always holds whole layers only.

When a run ends (done, stopped or failed) the actor lets go of its `Trainer` (models, optimiser, data)
and hands the freed memory back to the system, keeping only the final progress and summary: a
finished background trainer costs what an idle Ray worker does, not a model's worth. `TrainerRunner`
is the same class without Ray. Torch and the trainer load when a run starts, not at import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from .progress import LayerResult, TrainerProgress

if TYPE_CHECKING:
    from .trainer import RunSummary, Trainer

log = logging.getLogger("dsla_serve.trainer.actor")

SUBSCRIBER_METHOD = "on_layer_published"


class _Subscriber:
    """Delivers each `LayerResult` to an actor handle or a callable."""

    def __init__(self, target: Any):
        self.target = target

    def __call__(self, result: LayerResult) -> None:
        if self.target is None:
            return
        try:
            if isinstance(self.target, ray.actor.ActorHandle):
                getattr(self.target, SUBSCRIBER_METHOD).remote(result)
            else:
                self.target(result)
        except Exception:  # a broken subscriber must not lose the trained layer's run
            log.exception("subscriber failed on layer %d (depth %d)", result.layer, result.depth)


def release_memory() -> None:
    """Hand freed memory back to the system: Python's garbage, PyTorch's CUDA cache, and the C heap's
    free pages (glibc keeps them mapped otherwise, so the process's RSS would not fall)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = ctypes.util.find_library("c")
    if libc is not None:
        try:
            ctypes.CDLL(libc).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


class TrainerRunner:
    """A background `Trainer` (what `TrainerActor` runs in Ray). `config`: a ConvertConfig-shaped dict or
    the path of a convert YAML.

    `subscriber`: None, an actor handle with `on_layer_published(result: LayerResult)`, or a callable
    taking a `LayerResult`. `start=True` starts training at once.
    """

    def __init__(self, config: dict | str, subscriber: Any = None, start: bool = False):
        from .config import load_config, parse_config

        self._config = parse_config(config) if isinstance(config, dict) else load_config(Path(config))
        self._notify = _Subscriber(subscriber)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._trainer: Trainer | None = None
        self._final = TrainerProgress()  # the progress once a run ended and its trainer was let go
        self._published: list[LayerResult] = []
        self._summary: RunSummary | None = None
        if start:
            self.start()

    def start(self) -> bool:
        """Start (or, after `stop` or a finished run, restart) the loop; False if it is running."""
        from .trainer import Trainer

        if self._thread is not None and self._thread.is_alive():
            return False
        self._stop.clear()
        self._summary = None
        self._trainer = Trainer(self._config)  # a fresh model: a stopped run's unpublished layer is dropped
        self._thread = threading.Thread(target=self._run, name="dsla-trainer", daemon=True)
        self._thread.start()
        return True

    def _run(self) -> None:
        def published(layer_idx: int, depth: int, metrics: dict) -> None:
            result = LayerResult(layer=layer_idx, rank=depth - 1, metrics=metrics)
            self._published.append(result)
            self._notify(result)

        trainer = self._trainer
        try:
            self._summary = trainer.run(stop_event=self._stop, on_layer=published)
        except Exception:
            log.exception("trainer failed")  # the error is in progress().error
        finally:
            self._final = trainer.progress()
            self._trainer = trainer = None
            release_memory()

    def progress(self) -> TrainerProgress:
        """Phase, current layer, step / steps, last loss, published and target depth, error, running."""
        trainer = self._trainer
        state = trainer.progress() if trainer is not None else self._final
        return dataclasses.replace(state, running=self._thread is not None and self._thread.is_alive())

    def published(self) -> list[LayerResult]:
        """The layers this actor published, in order."""
        return list(self._published)

    def summary(self) -> RunSummary | None:
        """The last finished run's summary (None while running or after a failure)."""
        return self._summary

    def wait(self, timeout: float | None = None) -> TrainerProgress:
        """Block until the loop ends (or `timeout` seconds); returns `progress()`."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.progress()

    def stop(self, timeout: float | None = None) -> TrainerProgress:
        """Ask the loop to end at the next safe point and wait for it; returns `progress()`."""
        self._stop.set()
        return self.wait(timeout)


TrainerActor = ray.remote(max_concurrency=4)(TrainerRunner)
