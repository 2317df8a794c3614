"""Fit one converted layer against the original model: the one training loop of the trainer.

    result = fit_layer(model, layer_idx, depth, train, training, ds_user_config, dist, seed)

The model is at `depth` with `layer_idx` the newest converted layer; every other parameter is
frozen, so only the new layer's own parameters train (gates, mix logits and output gain, plus private
q/k/v/o copies when `training.train_qkvo`). Per micro-batch: teacher logits (depth 0, no grad) when a
KL term is on, the student forward, backward and step of the optimiser strategy (`optim.py`:
DeepSpeed or plain AdamW, `training.optimizer`), which updates at accumulation boundaries only.
Probes of the measured orders (`sensitivity.py`) fit with this same loop. With `episodes` (active), a seeded share of the rows are retrieval
episodes and the answer-token KL joins the objective (`dsla_serve.trainer.episodes`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..model import dsla_layers
from .distributed import DistContext
from .calibration import calibrate_output_scale
from .losses import LayerOutputCapture, distillation_loss, teacher_logits
from .optim import build_optimisation

if TYPE_CHECKING:  # pydantic-free at run time: the GPU image imports these modules without it
    from .config import TrainingConfig
    from .episodes import TrainingEpisodes


class BatchSchedule:
    """Which training sequences each micro-batch reads: a seeded stream of shuffled epochs.

    Step s consumes the global positions [s*G, (s+1)*G) of the stream, G = micro * accum * world;
    process r reads micro-batches r, r + world, r + 2*world, ... of the step. The sequences of a step
    are thus the same whatever the split between processes and accumulation, which is what makes a
    2-process run match a 1-process run with twice the accumulation.
    """

    def __init__(self, num_sequences: int, *, micro_batch: int, accumulation: int, world_size: int, rank: int,
                 seed: int):
        if num_sequences < 1:
            raise ValueError("no training sequences")
        self.n, self.micro, self.accum = num_sequences, micro_batch, accumulation
        self.world, self.rank, self.seed = world_size, rank, seed
        self._epochs: dict[int, torch.Tensor] = {}

    def _epoch(self, e: int) -> torch.Tensor:
        if e not in self._epochs:
            self._epochs = {e: torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + e))}
        return self._epochs[e]

    def positions(self, step: int, micro: int) -> range:
        """The global stream positions [micro_batch] of this process's micro-batch `micro` of `step`."""
        per_step = self.micro * self.accum * self.world
        first = step * per_step + (micro * self.world + self.rank) * self.micro
        return range(first, first + self.micro)

    def micro_batch(self, step: int, micro: int) -> torch.Tensor:
        """Indices [micro_batch] of this process's micro-batch `micro` (0..accum-1) of `step`."""
        return torch.stack([self._epoch(p // self.n)[p % self.n] for p in self.positions(step, micro)])


@dataclass
class FitResult:
    """Mean loss of each optimiser step (averaged over micro-batches and processes) and timings.

    `seconds` covers the whole fit (engine set-up included); `loop_seconds` the optimiser steps only,
    `first_step_seconds` the first of them (kernel compiles and allocator warm-up land there);
    `tokens` counts the training tokens of all processes (the student's, once per token).
    """

    losses: list[float] = field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0
    loop_seconds: float = 0.0
    first_step_seconds: float = 0.0
    tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.loop_seconds if self.loop_seconds > 0 else 0.0

    @property
    def steady_tokens_per_second(self) -> float | None:
        """Tokens/s of the steps after the first (what more steps cost); None below two steps."""
        rest = self.loop_seconds - self.first_step_seconds
        if self.steps < 2 or rest <= 0:
            return None
        return self.tokens * (self.steps - 1) / self.steps / rest

    @property
    def steps(self) -> int:
        return len(self.losses)


StepCallback = Callable[[int, float], None]  # (step, loss) after each optimiser step


def trainable_parameters(model: torch.nn.Module, layer_idx: int, train_qkvo: bool) -> list[torch.nn.Parameter]:
    """Freeze the model and unfreeze the new layer's own parameters (untying q/k/v/o first if asked)."""
    twin = dsla_layers(model)[layer_idx]
    if train_qkvo:
        twin.untie_projections()
    model.requires_grad_(False)
    params = list(twin.own_parameters().values())
    for p in params:
        p.requires_grad_(True)
    return params


def fit_layer(model: torch.nn.Module, layer_idx: int, depth: int, train: torch.Tensor, training: TrainingConfig,
              ds_user: dict, dist: DistContext, seed: int, *, steps: int | None = None,
              stop_event: threading.Event | None = None, on_step: StepCallback | None = None,
              episodes: TrainingEpisodes | None = None) -> FitResult:
    """Train the DSLA twin of `layer_idx` (the model at `depth`) for `steps` (default training.steps).

    `train` [N, L] int64 sequences (the same tensor on every process); `episodes` replaces a seeded
    share of them (per stream position and `seed`) by episode rows with answers. Stops early, between
    optimiser steps, once `stop_event` is set (the result says so). Leaves the model frozen.
    """
    steps = training.steps if steps is None else steps
    start = time.perf_counter()
    params = trainable_parameters(model, layer_idx, training.train_qkvo)
    if training.calibrate_output:  # the same rows on every process, so every rank sets the same gain
        model.eval()
        calibrate_output_scale(model, layer_idx, train[:training.micro_batch_size].to(dist.device))
    schedule = BatchSchedule(train.shape[0], micro_batch=training.micro_batch_size,
                             accumulation=training.grad_accumulation, world_size=dist.world_size, rank=dist.rank,
                             seed=seed)
    weights = training.loss
    mixing = episodes is not None and episodes.active
    # the same on every process (a teacher forward that some ranks skip could desynchronise ZeRO-3)
    needs_teacher = weights.kl > 0 or (mixing and weights.answer_kl > 0)
    result = FitResult()
    if not params:  # e.g. a sliding window without private projections: nothing to fit
        result.seconds = time.perf_counter() - start
        return result
    optimisation = build_optimisation(training, model, params, steps, ds_user, dist)
    model.eval()  # no dropout: the teacher and the student see the same deterministic network
    loop_start = time.perf_counter()
    try:
        with LayerOutputCapture(model, layer_idx) as capture:
            for step in range(steps):
                if stop_event is not None and stop_event.is_set():
                    result.stopped = True
                    break
                total = torch.zeros((), device=dist.device)
                for micro in range(training.grad_accumulation):
                    ids, answers = train[schedule.micro_batch(step, micro)], None
                    if mixing:
                        ids, answers = episodes.mix(ids, schedule.positions(step, micro), seed)
                        answers = answers.to(dist.device)
                    ids = ids.to(dist.device)
                    teacher = teacher_logits(model, ids, depth) if needs_teacher else None
                    logits = optimisation.forward(ids)
                    terms = distillation_loss(logits, ids, weights, capture, teacher, answers)
                    optimisation.backward(terms.total)
                    optimisation.step()
                    capture.clear()
                    total += terms.total.detach()
                # one host sync per step (not per micro-batch), then the mean over processes
                loss = dist.all_reduce_sum([float(total) / training.grad_accumulation])[0] / dist.world_size
                result.losses.append(loss)
                if step == 0:
                    result.first_step_seconds = time.perf_counter() - loop_start
                if on_step is not None:
                    on_step(step, loss)
    finally:
        optimisation.close()
        model.requires_grad_(False)
    end = time.perf_counter()
    result.seconds, result.loop_seconds = end - start, end - loop_start
    result.tokens = result.steps * training.micro_batch_size * training.grad_accumulation * dist.world_size * \
        train.shape[1]
    return result
