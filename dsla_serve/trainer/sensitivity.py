"""The conversion order: which layer becomes DSLA first. Methods (config `order.method`):

- `entropy`: the mean entropy (nats) of each layer's softmax attention rows, averaged over heads,
  positions and `calibration_sequences` training sequences. Diffuse attention (high entropy) is what
  a linear-attention state can imitate; sharp, spiky attention is not, so the highest entropy goes
  first. (The published heuristic scored one prompt.)
- `loss_delta`: measured. Each layer in turn is converted alone on a copy of the model, fitted for
  `probe_steps` steps with the real distillation objective, and scored by how far the objective
  on held-out sequences rises above the original model's. The smallest rise goes first. It costs
  one copy of the model in memory and `num_layers * probe_steps` training steps. The probes fit on
  the training rows with their episodes (`data.episodes`), like the real layers.
- `retrieval_delta` (the default): `loss_delta`'s score plus, for each probe, the KL to the original
  model at the answer tokens of `order.episode_sequences` held-out episode rows (built from the
  validation documents only). Answers are a fraction of a percent of the text's tokens, so the text
  objective alone cannot see that a layer carries retrieval; this term can. Needs episodes: without
  any that fit a row (data.seq_len too short for every kind), it orders by `loss_delta` and says so.
- `forward` (0, 1, ...), `reverse` (last first), `random` (a permutation drawn with the run's seed),
  `list` (the explicit `order.layers`).

Probes convert layers to the run's `layer_kind` and fit them with the run's optimiser strategy.

Scores are saved in the artifact manifest (`metadata.order`).
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..model import convert, decoder_layers
from .distill import fit_layer
from .distributed import DistContext
from .engine import read_user_config
from .evaluate import answer_divergence, validate
from .seeds import layer_seed

if TYPE_CHECKING:  # pydantic-free at run time: the GPU image imports these modules without it
    from .config import ConvertConfig
    from .episodes import TrainingEpisodes

log = logging.getLogger("dsla_serve.trainer")


@dataclass
class OrderResult:
    """A conversion order with its method and, for measured methods, the score of each layer."""

    method: str
    order: list[int]
    scores: dict[int, float] = field(default_factory=dict)
    stopped: bool = False

    def to_metadata(self) -> dict:
        return {"method": self.method, "order": list(self.order),
                "scores": {str(k): v for k, v in sorted(self.scores.items())}}


def calibration_sequences(sequences: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """`count` sequences of `sequences` [N, L] chosen with `seed` (all of them if fewer)."""
    if sequences.shape[0] <= count:
        return sequences
    pick = torch.randperm(sequences.shape[0], generator=torch.Generator().manual_seed(seed))[:count]
    return sequences[pick.sort().values]


@torch.no_grad()
def attention_row_means(model: torch.nn.Module, sequences: torch.Tensor, row_statistic, *, batch_size: int,
                        dist: DistContext) -> dict[int, float]:
    """{layer: `row_statistic` of the unconverted model's attention rows, averaged over heads, positions
    and `sequences` [N, L]}. `row_statistic` maps one layer's weights [B, H, T, T] (rows sum to 1 over
    the causal prefix) to [B, H, T].

    Runs eager attention (the only implementation that materialises the weights) and reduces each
    layer's weights inside a hook, so only one layer's weights exist at a time.
    """
    layers = decoder_layers(model)
    sums = [0.0] * len(layers)
    handles = []

    def hook(idx):
        def record(module, args, output):
            sums[idx] += float(row_statistic(output[1].float()).mean(dim=(1, 2)).sum())
        return record

    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        for i, layer in enumerate(layers):
            handles.append(layer.self_attn.register_forward_hook(hook(i)))
        mine = sequences[dist.rank::dist.world_size]
        for start in range(0, mine.shape[0], batch_size):
            model(input_ids=mine[start:start + batch_size].to(dist.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.set_attn_implementation(previous)
    total = dist.all_reduce_sum(sums + [float(mine.shape[0])])
    return {i: total[i] / total[-1] for i in range(len(layers))}


def attention_entropy(model: torch.nn.Module, sequences: torch.Tensor, *, batch_size: int,
                      dist: DistContext) -> dict[int, float]:
    """{layer: mean attention-row entropy in nats} of the unconverted model on `sequences` [N, L]."""
    return attention_row_means(model, sequences, lambda w: -torch.special.xlogy(w, w).sum(-1),
                               batch_size=batch_size, dist=dist)


def attention_local_mass(model: torch.nn.Module, sequences: torch.Tensor, window: int, *, batch_size: int,
                         dist: DistContext) -> dict[int, float]:
    """{layer: mean share of each attention row on its last `window` keys (the token itself included)}
    of the unconverted model on `sequences` [N, L]: 1.0 for a layer that a `window`-token sliding
    window reproduces exactly."""
    def local(w: torch.Tensor) -> torch.Tensor:
        T = w.shape[-1]
        band = torch.ones(T, T, dtype=w.dtype, device=w.device).tril().triu(-(window - 1))
        return (w * band).sum(-1)

    return attention_row_means(model, sequences, local, batch_size=batch_size, dist=dist)


def loss_delta_scores(model: torch.nn.Module, cfg: ConvertConfig, train: torch.Tensor, val: torch.Tensor,
                      dist: DistContext, *, stop_event: threading.Event | None = None,
                      on_layer: Callable[[int, float], None] | None = None,
                      episodes: TrainingEpisodes | None = None,
                      held_out: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[int, float] | None:
    """{layer: rise of the validation objective with only that layer converted and briefly fitted}.

    The probes fit with `episodes` mixed in (if given). With `held_out` [(input_ids [B, T], answers
    [B, T] bool)] each score adds the probe's answer-token KL on them (`retrieval_delta`).
    None if `stop_event` was set before every layer was probed.
    """
    training, weights = cfg.training, cfg.training.loss
    probe_val = calibration_sequences(val, cfg.order.calibration_sequences, cfg.seed)
    scores: dict[int, float] = {}
    for layer in range(len(decoder_layers(model))):
        if stop_event is not None and stop_event.is_set():
            return None
        probe = copy.deepcopy(model)
        seed = layer_seed(cfg.seed, layer, "probe")
        torch.manual_seed(seed)
        convert(probe, [layer], cfg.dsla_config(), kind=cfg.layer_kind)
        fit = fit_layer(probe, layer, 1, train, training, read_user_config(cfg.deepspeed), dist, seed,
                        steps=cfg.order.probe_steps, stop_event=stop_event, episodes=episodes)
        if fit.stopped:
            return None
        v = validate(probe, 1, probe_val, batch_size=training.eval_batch_size, dist=dist, weights=weights,
                     layer_idx=layer)
        scores[layer] = v.objective - weights.ce * v.teacher_ce  # the original model's objective is w_ce * CE
        if held_out is not None:
            scores[layer] += answer_divergence(probe, 1, held_out, dist=dist)
        del probe
        if on_layer is not None:
            on_layer(layer, scores[layer])
    return scores


def compute_order(model: torch.nn.Module, cfg: ConvertConfig, train: torch.Tensor, val: torch.Tensor,
                  dist: DistContext, *, stop_event: threading.Event | None = None,
                  on_layer: Callable[[int, float], None] | None = None,
                  episodes: TrainingEpisodes | None = None) -> OrderResult:
    """The conversion order of `cfg.order` for the (unconverted) `model`. Every process computes it;
    rank 0's result is broadcast so all agree. `on_layer(layer, score)` reports measured scores.
    `episodes`: the training episodes (probes fit with them) and held-out ones (`retrieval_delta`)."""
    method = cfg.order.method
    if method == "retrieval_delta" and (episodes is None or not episodes.held_out):
        notes = "; ".join(episodes.plan.notes) if episodes is not None else "no episodes given"
        log.warning("order retrieval_delta: no retrieval episode fits a row (%s); ordering by loss_delta", notes)
        method = "loss_delta"
    n = len(decoder_layers(model))
    if method == "forward":
        result = OrderResult(method, list(range(n)))
    elif method == "reverse":
        result = OrderResult(method, list(range(n - 1, -1, -1)))
    elif method == "random":
        generator = torch.Generator().manual_seed(layer_seed(cfg.seed, -1, "order"))
        result = OrderResult(method, [int(i) for i in torch.randperm(n, generator=generator)])
    elif method == "list":
        bad = [i for i in cfg.order.layers if not 0 <= i < n]
        if bad:
            raise ValueError(f"order.layers {cfg.order.layers}: indices {bad} are outside the model's "
                             f"{n} layers (0..{n - 1})")
        result = OrderResult(method, list(cfg.order.layers))
    elif method == "entropy":
        calib = calibration_sequences(train, cfg.order.calibration_sequences, cfg.seed)
        scores = attention_entropy(model, calib, batch_size=cfg.training.eval_batch_size, dist=dist)
        if on_layer is not None:
            for layer, score in scores.items():
                on_layer(layer, score)
        result = OrderResult(method, sorted(scores, key=lambda i: (-scores[i], i)), scores)
    elif method in ("loss_delta", "retrieval_delta"):
        held_out = episodes.held_out if method == "retrieval_delta" else None
        scores = loss_delta_scores(model, cfg, train, val, dist, stop_event=stop_event, on_layer=on_layer,
                                   episodes=episodes, held_out=held_out)
        if scores is None:
            return OrderResult(method, [], stopped=True)
        result = OrderResult(method, sorted(scores, key=lambda i: (scores[i], i)), scores)
    else:
        raise ValueError(f"unknown order method {method!r}")
    return dist.broadcast_object(result)
