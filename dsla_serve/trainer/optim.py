"""The optimiser strategy of the one training loop (`distill.fit_layer`): DeepSpeed or plain torch AdamW.

    opt = build_optimisation(training, model, params, steps, ds_user, dist)
    for each micro-batch:  logits = opt.forward(ids); opt.backward(loss); opt.step()
    opt.close()

Both take the same steps: the loss scaled by 1/grad_accumulation, gradients summed over the
micro-batches of a step and averaged over processes, clipped to `training.grad_clip` (global norm),
one AdamW update (lr, betas, weight decay of `training`) at each accumulation boundary, then the
warm-up + cosine schedule (`schedule.lr_multiplier`, over the fit's own steps) advanced by one. Parameters in bf16/fp16 are
updated through fp32 master copies (DeepSpeed's bf16 mode does the same).

- `deepspeed` (`training.optimizer: deepspeed`, the default): `deepspeed.initialize` with the user's
  config completed by `engine.complete_config` (ZeRO 0-2, precision from the model dtype); the torch
  AdamW and the schedule are handed to DeepSpeed as client optimizer and scheduler.
- `adamw`: the same AdamW and schedule driven here, for machines without DeepSpeed. With several
  processes the gradients are all-reduced here (ZeRO's partitioning is DeepSpeed's alone).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from .distributed import DistContext
from .schedule import lr_multiplier

if TYPE_CHECKING:  # pydantic-free at run time
    from .config import TrainingConfig


class Optimisation(Protocol):
    """One layer's optimiser. `forward` runs the whole model (logits [B, T, V]); `backward(loss)` adds the
    micro-batch's gradients; `step()` after every micro-batch updates at accumulation boundaries."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> None: ...

    def close(self) -> None: ...


def _schedule(optimizer: torch.optim.Optimizer, training: TrainingConfig,
              steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(
        step, total_steps=steps, warmup_steps=training.warmup_steps, schedule=training.schedule,
        min_ratio=training.min_lr_ratio))


def _adamw(params: list[torch.nn.Parameter], training: TrainingConfig) -> torch.optim.AdamW:
    """AdamW with one parameter group per dtype: a DSLA layer keeps its mix logits and output gain in fp32
    beside bf16 projections, and ZeRO flattens each group into one buffer of one dtype."""
    groups: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        groups.setdefault(p.dtype, []).append(p)
    return torch.optim.AdamW([{"params": group} for group in groups.values()], lr=training.lr,
                             betas=tuple(training.betas), weight_decay=training.weight_decay)


class DeepSpeedOptimisation:
    """The DeepSpeed engine of one layer (see `engine.py` for how its config is completed)."""

    def __init__(self, model: torch.nn.Module, params: list[torch.nn.Parameter], training: TrainingConfig,
                 steps: int, ds_user: dict, dist: DistContext):
        from .engine import complete_config

        import deepspeed

        ds_config = complete_config(ds_user, training, params[0].dtype, dist.world_size)
        optimizer = None if "optimizer" in ds_config else _adamw(params, training)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=params, optimizer=optimizer, config=ds_config,
            lr_scheduler=None if "scheduler" in ds_config else lambda opt: _schedule(opt, training, steps))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.engine(input_ids=input_ids, use_cache=False).logits

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    def close(self) -> None:
        """Drop the engine's hooks and optimizer state (the next layer gets a fresh engine)."""
        destroy = getattr(self.engine, "destroy", None)
        if destroy is not None:
            destroy()


class TorchOptimisation:
    """Plain torch AdamW with DeepSpeed's step semantics (module docstring), on one or several processes."""

    def __init__(self, model: torch.nn.Module, params: list[torch.nn.Parameter], training: TrainingConfig,
                 steps: int, dist: DistContext):
        self.model, self.params, self.training, self.dist = model, params, training, dist
        # fp32 master weights for low-precision parameters; fp32 parameters are their own masters
        self.masters = [p if p.dtype == torch.float32 else p.detach().float().requires_grad_(True) for p in params]
        self.optimizer = _adamw(self.masters, training)
        self.scheduler = _schedule(self.optimizer, training, steps)
        self.micro = 0

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits

    def backward(self, loss: torch.Tensor) -> None:
        accumulation = self.training.grad_accumulation
        (loss / accumulation if accumulation > 1 else loss).backward()
        for p, m in zip(self.params, self.masters):  # accumulate low-precision gradients in fp32
            if m is not p and p.grad is not None:
                m.grad = p.grad.float() if m.grad is None else m.grad.add_(p.grad.float())
                p.grad = None

    def step(self) -> None:
        self.micro += 1
        if self.micro % self.training.grad_accumulation:
            return
        grads = [m.grad for m in self.masters if m.grad is not None]
        if self.dist.world_size > 1:
            for g in grads:
                torch.distributed.all_reduce(g)
                g.div_(self.dist.world_size)
        if self.training.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.masters, self.training.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p, m in zip(self.params, self.masters):
                if m is not p:
                    p.copy_(m)

    def close(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.params:
            p.grad = None


def build_optimisation(training: TrainingConfig, model: torch.nn.Module, params: list[torch.nn.Parameter],
                       steps: int, ds_user: dict, dist: DistContext) -> Optimisation:
    """The strategy `training.optimizer` names ("deepspeed" or "adamw") for training `params` in `model` for
    `steps` optimiser steps (the schedule's length: `training.steps` for a layer, `order.probe_steps` for
    a probe)."""
    if training.optimizer == "deepspeed":
        return DeepSpeedOptimisation(model, params, training, steps, ds_user, dist)
    if training.optimizer == "adamw":
        return TorchOptimisation(model, params, training, steps, dist)
    raise ValueError(f"unknown training.optimizer {training.optimizer!r}; choose deepspeed or adamw")
