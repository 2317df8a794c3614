"""`Trainer`: chained distillation of a model into a DSLA artifact, one published layer at a time.

    trainer = Trainer(load_config("examples/convert-tiny.yaml"))
    summary = trainer.run(stop_event=None, on_layer=lambda layer, depth, metrics: ...)

For d = depth_published + 1 .. target: convert layer order[d-1] (layers order[:d-1] already
converted and frozen), fit it against the original model (`distill.fit_layer`), validate, and append
it to the artifact with its metrics. The artifact is the checkpoint: a rerun after a crash opens
it and continues at the first unpublished layer. Each layer's seed derives from the base seed and
the layer index only, so a resumed run produces bit-identical layer files.

Multi-process (torchrun / deepspeed launcher): every process runs this same loop on its share of
each batch; rank 0 alone writes the artifact, the others wait at a barrier after each layer.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..model import Artifact, conversion_order, convert, decoder_layers, set_depth
from ..model.manifest import has_manifest
from ..model.storage import mask
from ..model.loading import load_model_and_tokenizer
from .config import ConvertConfig
from .data import PackedData, add_training_documents, build_dataset, files_stamp, read_present_documents
from .distill import fit_layer
from .distributed import DistContext, init_distributed
from .engine import read_user_config
from .episodes import TrainingEpisodes
from .evaluate import answer_divergence, validate
from .progress import LayerResult, TrainerProgress
from .publish import Backoff, publish_layer
from .seeds import layer_seed
from .sensitivity import OrderResult, compute_order

log = logging.getLogger("dsla_serve.trainer")

LayerCallback = Callable[[int, int, dict], None]  # (layer index, depth now published, metrics)
StepCallback = Callable[[int, int, float], None]  # (layer index, step, loss)

# Config sections that must match an artifact's to resume it (paths, device, output and the
# target depth may change between runs; so may train-only data, which only layers trained after
# it appears see: published layers are never retrained).
RESUME_KEYS = ("seed", "dtype", "layer_kind", "order", "training", "dsla")
NOT_RESUME_DATA_KEYS = ("paths", "train_only_paths")
# Recorded in the recipe but free to change on resume: how the steps are taken (the same loop either way)
# and how much validation text scores a layer (metrics only, never the layer's weights).
NOT_COMPARED = (("training", "optimizer"), ("data", "max_val_tokens"))
# Recipe fields added since artifacts were first written, with the value that reproduces how an
# artifact without them was trained (no episodes, no answer term): a resume compares against these.
LEGACY_RECIPE = {("layer_kind",): "dsla", ("data", "episodes", "passkey_fraction"): 0.0, ("data", "episodes", "recall_fraction"): 0.0,
                 ("training", "loss", "answer_kl"): 0.0, ("order", "episode_sequences"): None}


class ResumeError(ValueError):
    """The output directory holds an artifact made with a different config."""


@dataclass
class RunSummary:
    """The outcome of `Trainer.run`: the layers published by this run and the artifact's state."""

    artifact: Path | str  # a local directory, or the object store URI
    order: list[int]
    published_depth: int
    target_depth: int
    layers: list[LayerResult] = field(default_factory=list)
    stopped: bool = False
    resumed_from: int = 0


def _recipe(cfg: ConvertConfig) -> dict:
    dumped = cfg.model_dump(mode="json")
    recipe = {k: dumped[k] for k in RESUME_KEYS}
    recipe["data"] = {k: v for k, v in dumped["data"].items() if k not in NOT_RESUME_DATA_KEYS}
    return recipe


def _with_legacy_defaults(saved: dict, now: dict) -> dict:
    """`saved` with the `LEGACY_RECIPE` fields it lacks filled in (the rest of a missing section from
    `now`: settings that do nothing without the legacy ones, e.g. episode lengths without episodes)."""
    saved = copy.deepcopy(saved)
    for path, value in LEGACY_RECIPE.items():
        node, current = saved, now
        for key in path[:-1]:
            current = current.get(key, {}) if isinstance(current, dict) else {}
            if key not in node:
                node[key] = {k: v for k, v in current.items() if (*path[:-1], k) not in LEGACY_RECIPE}
            node = node[key]
        if path[-1] not in node:
            node[path[-1]] = current.get(path[-1]) if value is None else value
    return saved


def _episodes_off(recipe: dict) -> bool:
    episodes = recipe.get("data", {}).get("episodes", {})
    return not (episodes.get("passkey_fraction") or episodes.get("recall_fraction"))


def _without_inert(recipe: dict) -> dict:
    """`recipe` without the settings that do nothing when it has no episodes: the answer term's
    weight, the episodes' lengths and the held-out episode count."""
    recipe = copy.deepcopy(recipe)
    recipe.get("training", {}).get("loss", {}).pop("answer_kl", None)
    recipe.get("order", {}).pop("episode_sequences", None)
    for key in ("passkey_min_len", "recall_pairs"):
        recipe.get("data", {}).get("episodes", {}).pop(key, None)
    return recipe


def _without(recipe: dict, paths) -> dict:
    """`recipe` without the leaves at `paths` (tuples of keys)."""
    recipe = copy.deepcopy(recipe)
    for path in paths:
        node = recipe
        for key in path[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return recipe


def _differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """Human-readable `field (artifact X, config Y)` for each leaf that differs."""
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} (artifact {a!r}, config {b!r})")
    return out


class Trainer:
    """Runs a `ConvertConfig` to its target depth. Usable without Ray; `TrainerActor` wraps it.

    `model`, `tokenizer` and `data` may be given (tests, notebooks); else they are loaded from the
    config. `publish_backoff`: how long to keep retrying a layer the store failed to take (`publish.py`).
    After `run`, `self.model` is the converted model at the published depth.
    """

    def __init__(self, config: ConvertConfig, *, model: torch.nn.Module | None = None, tokenizer=None,
                 data: PackedData | None = None, publish_backoff: Backoff = Backoff()):
        self.config = config
        self.publish_backoff = publish_backoff
        self.model = model
        self.tokenizer = tokenizer
        self.data = data
        self.episodes: TrainingEpisodes | None = None
        self.dist: DistContext | None = None
        self._progress = TrainerProgress()
        self._lock = threading.Lock()

    # --- progress -------------------------------------------------------------------------------
    def progress(self) -> TrainerProgress:
        with self._lock:
            return self._progress

    def _set(self, **changes) -> None:
        with self._lock:
            self._progress = dataclasses.replace(self._progress, **changes)

    # --- setup ----------------------------------------------------------------------------------
    def _load(self) -> None:
        cfg = self.config
        self.dist = init_distributed(cfg.device, deepspeed=cfg.training.optimizer == "deepspeed")
        if self.model is None:
            dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if self.dist.device.type == "cuda" else "float32")
            # seed 0: `tiny:<arch>` names one model everywhere (replicas build it the same way); the
            # run's `seed` drives the training only
            self.model, tokenizer = load_model_and_tokenizer(cfg.base_model, dtype=dtype, device=self.dist.device,
                                                             seed=0)
            self.tokenizer = self.tokenizer or tokenizer
        self.model.eval().requires_grad_(False)
        if self.data is None:
            if self.tokenizer is None:
                raise ValueError("a tokenizer is needed to build the data (give one with the model)")
            self.data = build_dataset(cfg.data, self.tokenizer, cfg.seed)
        if self.episodes is None:
            self.episodes = self._build_episodes()

    def _build_episodes(self) -> TrainingEpisodes:
        """The training and held-out episodes of `data.episodes` (none when turned off)."""
        cfg = self.config
        if cfg.data.episodes.enabled and self.tokenizer is None:
            raise ValueError("data.episodes needs a tokenizer (give one with the model), or set "
                             "data.episodes.passkey_fraction and recall_fraction to 0")
        episodes = TrainingEpisodes.build(cfg.data.episodes, self.tokenizer, self.data, cfg.data.seq_len,
                                          seed=cfg.seed, held_out_rows=cfg.order.episode_sequences,
                                          batch_size=cfg.training.eval_batch_size) if cfg.data.episodes.enabled \
            else None
        if episodes is not None:
            for note in episodes.plan.notes:
                log.warning("data.episodes: %s", note)
            self.data.info["episodes"] = episodes.info()
        return episodes

    def _open_artifact(self, stop_event) -> Artifact | None:
        """The existing artifact of this config (resume), or a new one with a freshly computed order."""
        cfg, dist = self.config, self.dist
        out = cfg.output  # a local directory (Path) or an object store URI (str)
        # rank 0 decides for everyone: a rank that looked after rank 0 created the manifest would
        # otherwise skip the (collective) order computation and deadlock the others
        if dist.broadcast_object(has_manifest(out)):
            artifact = Artifact.open(out)
            self._check_resumable(artifact)
            return artifact
        self._set(phase="ordering")
        if cfg.order.method in ("entropy", "loss_delta", "retrieval_delta"):
            log.info("scoring the %d layers (%s)...", len(decoder_layers(self.model)), cfg.order.method)

        def scored(layer: int, score: float) -> None:
            self._set(layer=layer)
            log.info("  layer %d: %s %.5f", layer, cfg.order.method, score)

        result: OrderResult = compute_order(self.model, cfg, self.data.train, self.data.val, dist,
                                            stop_event=stop_event, on_layer=scored, episodes=self.episodes)
        if result.stopped:
            return None
        log.info("conversion order (%s): %s", result.method, result.order)
        if dist.is_main:
            Artifact.create(out, self.model, base_model_id=cfg.base_model, config=cfg.dsla_config(),
                            kind=cfg.layer_kind, order=result.order, metadata={"order": result.to_metadata(), "recipe": _recipe(cfg),
                                                          "data": self.data.info})
        dist.barrier()
        return Artifact.open(out)

    def _check_resumable(self, artifact: Artifact) -> None:
        # The base model itself is checked by fingerprint when the artifact is applied (a moved model
        # directory is still the same model).
        cfg = self.config
        if artifact.kind != cfg.layer_kind:
            raise ResumeError(f"{artifact.manifest_path}: the artifact holds {artifact.kind!r} layers, the config's "
                              f"layer_kind is {cfg.layer_kind!r}; use another output directory")
        if artifact.config != cfg.dsla_config():
            raise ResumeError(f"{artifact.manifest_path}: DSLA config {artifact.config} differs from the config's "
                              f"{cfg.dsla_config()}; use another output directory")
        saved = artifact.metadata.get("recipe")
        now = _recipe(cfg)
        if saved is not None:
            saved = _with_legacy_defaults(saved, now)
            if _episodes_off(saved) and _episodes_off(now):  # then what only episodes use cannot differ
                saved, now = _without_inert(saved), _without_inert(now)
        if saved is not None:
            saved, now = _without(saved, NOT_COMPARED), _without(now, NOT_COMPARED)
        differ = _differences(saved, now) if saved is not None else []
        if differ:
            raise ResumeError(f"{artifact.manifest_path}: cannot resume, the artifact was made with different "
                              f"settings: {'; '.join(differ)}. Restore them or use another output directory")

    # --- the loop -------------------------------------------------------------------------------
    def run(self, stop_event: threading.Event | None = None, on_layer: LayerCallback | None = None,
            on_step: StepCallback | None = None) -> RunSummary:
        """Publish layers until the target depth (or `stop_event`, checked between optimiser steps).

        `on_layer(layer, depth, metrics)` is called after each layer is published; `on_step(layer,
        step, loss)` after each optimiser step. A layer interrupted by `stop_event` is not published.
        """
        try:
            self._set(phase="loading", error=None)
            self._load()
            artifact = self._open_artifact(stop_event)
            if artifact is None:
                self._set(phase="stopped")
                return RunSummary(self.config.output, [], 0, 0, stopped=True)
            summary = self._train(artifact, stop_event, on_layer, on_step)
            self._set(phase="stopped" if summary.stopped else "done")
            return summary
        except BaseException as e:
            self._set(phase="failed", error=f"{type(e).__name__}: {e}")
            raise

    def _train(self, artifact: Artifact, stop_event, on_layer, on_step) -> RunSummary:
        cfg, dist, model = self.config, self.dist, self.model
        order = artifact.order
        target = len(order) if cfg.depth is None else cfg.depth
        if target > len(order):
            raise ValueError(f"depth {target} exceeds the artifact's conversion order {order} "
                             f"({len(order)} layers)")
        unpublished = conversion_order(model)[artifact.depth:]
        if unpublished:
            raise RuntimeError(f"the model already holds converted layers {unpublished} that the artifact does not "
                               "(a stopped or failed run's); give this Trainer a fresh model")
        artifact.apply(model)
        resumed = artifact.depth
        if resumed:
            log.info("resuming %s at depth %d of %d", mask(str(artifact.path)), resumed, target)
        summary = RunSummary(artifact.path, order, resumed, target, resumed_from=resumed)
        self._set(published_depth=resumed, target_depth=target)
        ds_user = read_user_config(cfg.deepspeed)
        for rank in range(resumed, target):
            if cfg.data.train_only_paths:
                self._refresh_train_only()
            result = self._train_layer(artifact, rank, ds_user, stop_event, on_step)
            if result is None:
                summary.stopped = True
                break
            summary.layers.append(result)
            summary.published_depth = rank + 1
            self._set(published_depth=rank + 1)
            if on_layer is not None:
                on_layer(result.layer, rank + 1, result.metrics)
        return summary

    def _refresh_train_only(self) -> None:
        """Re-pack the train-only documents into `self.data.train` when their files changed (rank 0 reads)."""
        cfg, dist = self.config.data, self.dist
        stamp = dist.broadcast_object(files_stamp(cfg.train_only_paths))
        if stamp == self.data.train_only_stamp:
            return
        if self.tokenizer is None:
            raise ValueError("data.train_only_paths needs a tokenizer (give one with the model)")
        docs = dist.broadcast_object(read_present_documents(cfg.train_only_paths) if dist.is_main else None)
        self.data = add_training_documents(self.data, docs, self.tokenizer, cfg.seq_len, stamp)
        log.info("train-only data: %d documents -> %d extra training sequences",  # counts only, never the text
                 self.data.info["train_only_documents"], self.data.info["train_only_sequences"])

    def _train_layer(self, artifact: Artifact, rank: int, ds_user: dict, stop_event, on_step) -> LayerResult | None:
        """Convert, fit, validate and publish layer order[rank]; None if stopped before the end."""
        cfg, dist, model = self.config, self.dist, self.model
        layer, depth = artifact.order[rank], rank + 1
        seed = layer_seed(cfg.seed, layer)
        self._set(phase="training", layer=layer, step=0, steps=cfg.training.steps, loss=None)
        torch.manual_seed(seed)  # the new layer's initialisation (all devices)
        convert(model, [layer], cfg.dsla_config(), kind=cfg.layer_kind)
        set_depth(model, depth)

        def step_done(step: int, loss: float) -> None:
            self._set(step=step + 1, loss=loss)
            if on_step is not None:
                on_step(layer, step, loss)

        fit = fit_layer(model, layer, depth, self.data.train, cfg.training, ds_user, dist, seed,
                        stop_event=stop_event, on_step=step_done, episodes=self.episodes)
        if fit.stopped:
            return None
        self._set(phase="validating")
        start = time.perf_counter()
        v = validate(model, depth, self.data.val, batch_size=cfg.training.eval_batch_size, dist=dist,
                     weights=cfg.training.loss, layer_idx=layer)
        metrics = {"val_loss": v.ce, "ppl": v.ppl, "teacher_ppl": v.teacher_ppl, "ppl_ratio": v.ppl_ratio,
                   "val_kl": v.kl, "val_mse": v.mse, "val_objective": v.objective,
                   "train_loss_first": fit.losses[0] if fit.losses else None,
                   "train_loss_last": fit.losses[-1] if fit.losses else None,
                   "seconds": fit.seconds + time.perf_counter() - start, "steps": fit.steps,
                   "train_tokens": fit.tokens, "train_tokens_per_s": fit.tokens_per_second,
                   "train_tokens_per_s_steady": fit.steady_tokens_per_second, "world_size": dist.world_size}
        if self.episodes is not None and self.episodes.held_out:
            metrics["val_answer_kl"] = answer_divergence(model, depth, self.episodes.held_out, dist=dist)
            metrics["seconds"] = fit.seconds + time.perf_counter() - start
        if cfg.data.train_only_paths:
            metrics["train_only_sequences"] = self.data.info.get("train_only_sequences", 0)
        published = self._publish(artifact, layer, metrics, stop_event) if dist.is_main else True
        dist.barrier()  # the others wait until the layer is on disk
        if not dist.broadcast_object(published):
            return None
        return LayerResult(layer, rank, metrics)

    def _publish(self, artifact: Artifact, layer: int, metrics: dict, stop_event) -> bool:
        """Append the layer, retrying while the store is unreachable (`publish.py`); the retries show in
        the progress (phase "publishing", error saying why and when the next attempt is)."""
        self._set(phase="publishing")

        def retrying(attempt: int, delay: float, error: Exception) -> None:
            self._set(error=f"store unreachable (attempt {attempt} failed), retrying in {delay:.0f} s: {error}")

        published = publish_layer(artifact, self.model, layer, metrics, backoff=self.publish_backoff,
                                  stop_event=stop_event, on_retry=retrying)
        self._set(error=None)
        return published
