"""Chained conversion for controlled experiments: any layer kind, the trainer's objective, plain PyTorch.

The quality experiments compare layer kinds (DSLA, single gated state, linear, sliding window),
orders and gate settings at the same training budget, on a GPU machine without DeepSpeed. So this
module reuses the trainer's pieces that need neither DeepSpeed nor pydantic (the distillation loss and
its layer-output capture, the schedule, attention entropy, validation, trainable-parameter selection)
and drives the optimisation with a plain AdamW. One layer is fitted exactly like
`dsla_serve.trainer.distill.fit_layer` does with ZeRO stage 0 on one device: same loss, same
warm-up + cosine schedule, same clipping; the batches come from the teacher recipe's mixture (book
text with passkey and recall episodes), identical for every run at the same (rank, step).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch

from dsla_serve.model import DSLAConfig, convert, decoder_layers
from dsla_serve.trainer.calibration import calibrate_output_scale
from dsla_serve.trainer.distill import trainable_parameters
from dsla_serve.trainer.distributed import DistContext
from dsla_serve.trainer.evaluate import answer_divergence as trainer_answer_divergence
from dsla_serve.trainer.evaluate import validate
from dsla_serve.trainer.losses import LayerOutputCapture, distillation_loss, teacher_logits
from dsla_serve.trainer.schedule import lr_multiplier
from dsla_serve.trainer.sensitivity import attention_entropy

from .config import FitSettings, LossWeights

Batches = Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # global step -> (input_ids [B, T], answers [B, T] bool)


def single_process(device: torch.device) -> DistContext:
    """The trainer's DistContext for one process without a process group (no DeepSpeed needed)."""
    return DistContext(rank=0, world_size=1, local_rank=0, device=device)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (fp32 master weights), plain fp32 on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else \
        torch.autocast("cpu", enabled=False)


def convert_layer(model, layer_idx: int, kind: str, config: DSLAConfig, seed: int) -> None:
    """Append decoder layer `layer_idx`, as a `kind` layer, to the model's conversion order and set the
    depth to include it; `seed` fixes its random gate weights (`gate_init_std`) and the down projection
    of low-rank gates."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        convert(model, [layer_idx], config, kind=kind)


def fit_layer(model, layer_idx: int, depth: int, batches: Batches, first_step: int, settings: FitSettings,
              device: torch.device, progress=None) -> list[float]:
    """Train the twin of `layer_idx` (the newest, the model at `depth`) for `settings.steps` steps on
    batches(first_step + s). The objective is the trainer's, plus `settings.loss.answer_kl` times the KL
    at the batch's answer tokens. Returns the loss of every step; leaves the model frozen."""
    params = trainable_parameters(model, layer_idx, settings.train_qkvo)
    if not params:  # e.g. a sliding window with shared projections: nothing to fit
        return []
    if settings.calibrate_output:
        model.eval()
        with autocast(device):
            calibrate_output_scale(model, layer_idx, batches(first_step)[0].to(device))
    optimizer = torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    model.eval()
    try:
        with LayerOutputCapture(model, layer_idx) as capture:
            for step in range(settings.steps):
                scale = lr_multiplier(step, total_steps=settings.steps, warmup_steps=settings.warmup_steps,
                                      min_ratio=settings.min_lr_ratio)
                for group in optimizer.param_groups:
                    group["lr"] = settings.lr * scale
                ids, answers = batches(first_step + step)
                ids = ids.to(device)
                w_answer = settings.loss.answer_kl
                with autocast(device):
                    teacher = teacher_logits(model, ids, depth) if settings.loss.kl > 0 or w_answer > 0 else None
                    logits = model(input_ids=ids, use_cache=False).logits
                    total = distillation_loss(logits, ids, settings.loss, capture, teacher,
                                              answers if w_answer > 0 else None).total
                total.backward()
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                capture.clear()
                losses.append(float(total.detach()))
                if progress is not None:
                    progress(step, losses[-1])
    finally:
        model.requires_grad_(False)
    return losses


def validation(model, depth: int, layer_idx: int | None, sequences: torch.Tensor, weights: LossWeights,
               device: torch.device, batch_size: int = 4) -> dict:
    """The trainer's validation (ce, teacher ce, kl, relative mse, ppl ratio) of the model at `depth`."""
    with autocast(device):
        v = validate(model, depth, sequences, batch_size=batch_size, dist=single_process(device), weights=weights,
                     layer_idx=layer_idx)
    return {"ce": v.ce, "teacher_ce": v.teacher_ce, "kl": v.kl, "mse": v.mse, "objective": v.objective,
            "ppl_ratio": v.ppl_ratio}


def simple_order(method: str, num_layers: int, seed: int = 0) -> list[int]:
    """forward, reverse, or a seeded random permutation."""
    if method == "forward":
        return list(range(num_layers))
    if method == "reverse":
        return list(range(num_layers - 1, -1, -1))
    if method == "random":
        return [int(i) for i in np.random.default_rng(seed).permutation(num_layers)]
    raise ValueError(f"unknown order method {method!r}")


def entropy_order(model, calibration: torch.Tensor, device: torch.device,
                  batch_size: int = 2) -> tuple[list[int], dict]:
    """Highest mean attention entropy first (the trainer's `entropy` method) on `calibration` [N, L]."""
    with autocast(device):
        scores = attention_entropy(model, calibration, batch_size=batch_size, dist=single_process(device))
    return sorted(scores, key=lambda i: (-scores[i], i)), scores


def answer_divergence(model, depth: int, episodes: list[tuple[torch.Tensor, torch.Tensor]],
                      device: torch.device) -> float:
    """Mean over `episodes` [(input_ids [B, T], answers [B, T] bool)] of the KL to the teacher (depth 0)
    at the answer tokens, for the model at `depth`: how much retrieval the converted layers lost
    (the trainer's `dsla_serve.trainer.evaluate.answer_divergence`, under autocast)."""
    with autocast(device):
        return trainer_answer_divergence(model, depth, episodes, dist=single_process(device))


def loss_delta_order(model, batches: Batches, val: torch.Tensor, settings: FitSettings, config: DSLAConfig,
                     device: torch.device, seed: int = 0,
                     episodes: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> tuple[list[int], dict]:
    """Smallest rise of the validation objective first (the trainer's `loss_delta` method): each layer is
    converted alone on a copy of the model, fitted for `settings.steps` steps, and scored.

    With `episodes` (held-out retrieval batches, see `answer_divergence`) the score adds the KL at their
    answer tokens (the `retrieval_delta` order): the text objective alone cannot see that a layer
    carries retrieval, since answers are a fraction of a percent of the tokens."""
    scores = {}
    for layer in range(len(decoder_layers(model))):
        t0 = time.perf_counter()
        probe = copy.deepcopy(model)
        convert_layer(probe, layer, "dsla", config, seed + layer)
        fit_layer(probe, layer, 1, batches, 0, settings, device)
        v = validation(probe, 1, layer, val, settings.loss, device)
        scores[layer] = v["objective"] - settings.loss.ce * v["teacher_ce"]
        if episodes is not None:
            scores[layer] += answer_divergence(probe, 1, episodes, device)
        del probe
        print(f"  {'retrieval' if episodes is not None else 'loss'}_delta probe of layer {layer}: "
              f"{scores[layer]:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return sorted(scores, key=lambda i: (scores[i], i)), scores
