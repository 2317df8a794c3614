"""The trainer's config: `TrainerSettings` (how to convert: data, order, training, layers) and
`ConvertConfig` (those plus the base model and the artifact: the whole of a `dsla-serve convert` file).

A serving policy's `trainer` section is `TrainerSettings` too (`dsla_serve.policies.schema.TrainerSection`
extends it): one schema, one set of defaults, whether the trainer runs from `dsla-serve convert` or
in the background of `dsla-serve serve`.

    base_model: smollm2-135m             # folder, .gguf, hub id, smollm2-135m, or tiny:<arch> (random)
    output: ../runs/smollm2              # the artifact directory or s3:// / gs:// URI (an existing one is resumed)
    depth: 8                             # layers to convert (default: all)
    layer_kind: dsla                     # or a baseline: gla (one gated state), swa (sliding window), linear
    data: {paths: [../books], seq_len: 1024,
           episodes: {passkey_fraction: 0.25, recall_fraction: 0.1}}   # retrieval episodes mixed in
    order: {method: retrieval_delta}     # retrieval_delta | loss_delta | entropy | forward | reverse | random | list
    training: {steps: 100, lr: 1.0e-3, micro_batch_size: 4, optimizer: deepspeed,
               loss: {mse: 1.0, kl: 1.0, ce: 0.0, answer_kl: 1.0}}
    dsla: {gate_rank: null}              # DSLAConfig fields
    deepspeed: {zero_optimization: {stage: 2}}   # a dict, or the path of a DeepSpeed JSON config

Shorthands: `data: [a.txt, books/]` is `data: {paths: [...]}`, `order: entropy` is `order: {method:
entropy}`. Relative paths (data paths, output, a DeepSpeed JSON path, a base model that names a local
directory) resolve against the directory of the YAML file. Every problem is reported as one line
naming the file, the field and its line (`dsla_serve.configfile`). Imports neither torch nor ray.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..configfile import ConfigFileError, FieldProblem, load_yaml_model, validate_model
from ..model.config import DSLAConfig
from ..model.sources import ModelSourceError, normalise_spec
from ..model.storage import is_uri, mask
from ..quality.recall import KEY_WORDS

LAYER_KINDS = ("dsla", "gla", "linear", "swa")  # dsla_serve.model.baselines.LAYER_KINDS (a test keeps them equal)
ORDER_METHODS = ("retrieval_delta", "loss_delta", "entropy", "forward", "reverse", "random", "list")


class ConfigError(ConfigFileError):
    """A convert config that cannot be used; `problems` holds one line per problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _resolve(path: str | Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    p = Path(path).expanduser()
    return p if p.is_absolute() or base is None else Path(os.path.normpath(Path(base) / p))


class EpisodeConfig(_Strict):
    """Retrieval episodes mixed into the training rows (see `dsla_serve.trainer.episodes`).

    Defaults: the quality experiments' mixture (docs/quality.md). Both fractions 0 turn episodes off.
    A kind whose shortest episode does not fit `data.seq_len` is left out (its rows stay text; the
    artifact's `metadata.data.episodes` says so).
    """

    passkey_fraction: float = Field(0.25, ge=0.0, le=1.0, description="share of training rows that are a "
                                    "passkey episode (a number stated in training text, asked for at the end)")
    recall_fraction: float = Field(0.1, ge=0.0, le=1.0, description="share of training rows that are an "
                                   "associative-recall episode (word:number pairs, then every word again)")
    passkey_min_len: int | None = Field(None, ge=1, description="shortest passkey episode in tokens (lengths are "
                                        "drawn up to data.seq_len); default min(256, seq_len // 2)")
    recall_pairs: tuple[int, int] = Field((4, 64), description="range of word:number pairs per recall episode "
                                          "(fewer are drawn where an episode would not fit the row)")

    @model_validator(mode="after")
    def _check(self) -> "EpisodeConfig":
        if self.passkey_fraction + self.recall_fraction > 1.0:
            raise ValueError(f"passkey_fraction ({self.passkey_fraction}) + recall_fraction "
                             f"({self.recall_fraction}) must be at most 1")
        lo, hi = self.recall_pairs
        if not 1 <= lo <= hi <= len(KEY_WORDS):
            raise ValueError(f"recall_pairs must satisfy 1 <= lo <= hi <= {len(KEY_WORDS)}, got {self.recall_pairs}")
        return self

    @property
    def enabled(self) -> bool:
        return self.passkey_fraction > 0 or self.recall_fraction > 0


class DataConfig(_Strict):
    """Where the text comes from and how it is cut into training and validation sequences."""

    paths: list[Path] = Field(min_length=1, description="text files, folders (*.txt, *.jsonl) or .jsonl files")
    seq_len: int = Field(2048, ge=2, description="tokens per packed sequence (the default is what the real-model claim "
                         "measured, docs/quality.md)")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of documents held out for validation")
    max_documents: int | None = Field(None, ge=2, description="use at most this many documents (after shuffling)")
    max_train_tokens: int | None = Field(None, ge=2, description="cap on training tokens")
    max_val_tokens: int | None = Field(65536, ge=2, description="cap on validation tokens (each layer is "
                                       "validated on them; null: the whole validation split)")
    segment_chars: int | None = Field(
        None, ge=100, description="cut documents longer than this into contiguous segments (at line breaks) "
        "before the split; default: only a corpus of a single document is cut, into 20000-character segments")
    train_only_paths: list[Path] = Field(
        default_factory=list, description="files (*.txt, *.jsonl) added to the training split only, never to "
        "validation; read again before each layer, a file that does not exist yet counts as empty (e.g. the "
        "served-prompt sample a serving policy writes); not part of the settings a resume must match")
    episodes: EpisodeConfig = Field(default_factory=EpisodeConfig, description="retrieval episodes mixed into "
                                    "the training rows (fractions 0: text only)")

    @model_validator(mode="after")
    def _episodes_fit(self) -> "DataConfig":
        n = self.episodes.passkey_min_len
        if n is not None and n > self.seq_len:
            raise ValueError(f"episodes.passkey_min_len ({n}) is longer than seq_len ({self.seq_len})")
        return self

    @field_validator("paths", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, (str, os.PathLike)) else v

    @field_validator("paths")
    @classmethod
    def _resolve_paths(cls, v: list[Path], info: ValidationInfo) -> list[Path]:
        return [_resolve(p, info) for p in v]

    @field_validator("train_only_paths")
    @classmethod
    def _resolve_train_only(cls, v: list[Path], info: ValidationInfo) -> list[Path]:
        return [_resolve(p, info) for p in v]


class OrderConfig(_Strict):
    """How the conversion order (a permutation of the decoder layers) is chosen."""

    method: Literal["retrieval_delta", "loss_delta", "entropy", "forward", "reverse", "random", "list"] = Field(
        "retrieval_delta", description="default retrieval_delta; loss_delta when data.episodes are off and "
        "no method is given; random: a permutation drawn with the run's seed")
    layers: list[int] | None = Field(None, description="the explicit order (method: list); may be a prefix")
    calibration_sequences: int = Field(32, ge=1, description="sequences scored by entropy, loss_delta and "
                                       "retrieval_delta")
    probe_steps: int = Field(20, ge=1, description="optimiser steps fitting each probed layer (loss_delta, "
                             "retrieval_delta)")
    episode_sequences: int = Field(32, ge=1, description="held-out episode rows (validation documents) whose "
                                   "answer-token KL retrieval_delta adds to each probe's score")

    @model_validator(mode="after")
    def _layers_iff_list(self) -> "OrderConfig":
        if self.method == "list" and not self.layers:
            raise ValueError("method 'list' needs `layers`, the explicit conversion order")
        if self.method != "list" and self.layers is not None:
            raise ValueError(f"`layers` is only used with method 'list', not {self.method!r}")
        if self.layers is not None and len(set(self.layers)) != len(self.layers):
            raise ValueError(f"`layers` repeats a layer: {self.layers}")
        return self


class LossWeights(_Strict):
    """Weights of the distillation terms (see `dsla_serve.trainer.losses`)."""

    mse: float = Field(1.0, ge=0.0, description="relative MSE of the layer's attention output vs the teacher's")
    kl: float = Field(1.0, ge=0.0, description="KL(teacher logits || student logits)")
    ce: float = Field(0.0, ge=0.0, description="next-token cross-entropy")
    answer_kl: float = Field(1.0, ge=0.0, description="KL to the teacher at the answer tokens of the batch's "
                             "episodes alone (0 in a batch without answers, e.g. with data.episodes off)")

    @model_validator(mode="after")
    def _not_all_zero(self) -> "LossWeights":
        if self.mse == self.kl == self.ce == 0.0:
            raise ValueError("at least one loss weight (mse, kl, ce) must be > 0")
        return self


class TrainingConfig(_Strict):
    """Optimisation of each new layer (the same for every layer of the order)."""

    steps: int = Field(200, ge=1, description="optimiser steps per layer")
    lr: float = Field(1e-3, gt=0.0)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(10, ge=0, description="linear warm-up steps before the schedule")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine floor, as a fraction of lr")
    optimizer: Literal["deepspeed", "adamw"] = Field(
        "deepspeed", description="the optimiser strategy of the one training loop: the DeepSpeed engine (ZeRO 0-2, "
        "the `deepspeed` section) or plain torch AdamW (machines without DeepSpeed); same loop, same steps, same "
        "artifact")
    micro_batch_size: int = Field(2, ge=1, description="sequences per forward pass, per process")
    grad_accumulation: int = Field(1, ge=1, description="micro-batches per optimiser step, per process")
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = Field(1.0, gt=0.0, description="gradient norm clipping (null: none)")
    train_qkvo: bool = Field(True, description="also train private copies of q/k/v/o (untied projections); "
                             "without them the gates alone lose far more (docs/quality.md)")
    calibrate_output: bool = Field(True, description="set the new layer's output gain by least squares on "
                                   "one batch before fitting (see dsla_serve.trainer.calibration)")
    loss: LossWeights = LossWeights()
    eval_batch_size: int = Field(8, ge=1, description="sequences per forward pass during validation")


_DSLA_DEFAULTS = DSLAConfig()


class DSLAFields(_Strict):
    """The `DSLAConfig` of the converted layers (defaults: DSLAConfig's)."""

    tau: float = Field(_DSLA_DEFAULTS.tau, gt=0.0)
    gate_rank: int | None = Field(_DSLA_DEFAULTS.gate_rank, ge=1)
    history_gate_bias: float = _DSLA_DEFAULTS.history_gate_bias
    recency_gate_bias: float = _DSLA_DEFAULTS.recency_gate_bias
    gate_init_std: float = Field(_DSLA_DEFAULTS.gate_init_std, ge=0.0)
    mix_init: tuple[float, float] = _DSLA_DEFAULTS.mix_init

    def to_dsla_config(self) -> DSLAConfig:
        return DSLAConfig(**self.model_dump())


class TrainerSettings(_Strict):
    """How to convert a model: everything of a convert config but the base model and the artifact.

    A policy's `trainer` section is this (plus serving fields); `ConvertConfig` adds `base_model` and
    `output`. Defaults are the measured ones (docs/quality.md, "Defaults chosen").
    """

    depth: int | None = Field(None, ge=1, description="layers to convert in total (default: every layer)")
    seed: int = Field(0, ge=0, description="base seed of the data split and of each layer's initialisation and "
                      "batches (derived from it and the layer index); tiny:<arch> models are always built with seed 0")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N (multi-process: the local rank's GPU)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="model dtype; auto = bfloat16 on GPU, float32 on CPU")
    layer_kind: Literal["dsla", "gla", "linear", "swa"] = Field(
        "dsla", description="what a converted layer becomes: dsla (two gated states), or a baseline of "
        "dsla_serve.model.baselines: gla (one gated state), swa (sliding-window softmax, 64 tokens), linear (elu+1)")
    data: DataConfig
    order: OrderConfig = OrderConfig()
    training: TrainingConfig = TrainingConfig()
    dsla: DSLAFields = DSLAFields()
    deepspeed: dict[str, Any] | Path = Field(
        default_factory=lambda: {"zero_optimization": {"stage": 2}},
        description="DeepSpeed config dict or JSON path, passed through (batch fields filled in); "
        "used with training.optimizer deepspeed")

    @field_validator("data", mode="before")
    @classmethod
    def _paths_shorthand(cls, v: Any) -> Any:
        """`data: [a.txt, books/]` (or one path) is `data: {paths: [...]}`."""
        return {"paths": v} if isinstance(v, (list, tuple, str, os.PathLike)) else v

    @field_validator("order", mode="before")
    @classmethod
    def _method_shorthand(cls, v: Any) -> Any:
        """`order: entropy` is `order: {method: entropy}`."""
        return {"method": v} if isinstance(v, str) else v

    @model_validator(mode="before")
    @classmethod
    def _default_order_without_episodes(cls, data: Any) -> Any:
        """No order method given and episodes turned off: loss_delta (retrieval_delta needs episodes)."""
        if not isinstance(data, dict):
            return data
        episodes = data.get("data", {}).get("episodes") if isinstance(data.get("data"), dict) else None
        order = data.get("order", {})
        if isinstance(order, str) or not isinstance(order, dict):
            return data
        if isinstance(episodes, dict) and episodes.get("passkey_fraction") == 0 and \
                episodes.get("recall_fraction") == 0 and "method" not in order:
            data = {**data, "order": {**order, "method": "loss_delta"}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "TrainerSettings":
        if self.order.method == "retrieval_delta" and not self.data.episodes.enabled:
            raise FieldProblem("order.method", "retrieval_delta scores layers on held-out retrieval episodes, but "
                               "data.episodes.passkey_fraction and data.episodes.recall_fraction are both 0; "
                               "turn episodes on or choose order.method loss_delta")
        layers = self.order.layers
        if layers is not None and self.depth is not None and len(layers) < self.depth:
            raise FieldProblem("order.layers", f"lists {len(layers)} layers, fewer than depth {self.depth}")
        return self

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        head, _, index = v.partition(":")
        if head not in ("auto", "cpu", "cuda") or (index and (head != "cuda" or not index.isdigit())):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {v!r}")
        return v

    @field_validator("deepspeed", mode="before")
    @classmethod
    def _deepspeed_path(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, (str, os.PathLike)):
            path = _resolve(v, info)
            if not path.is_file():
                raise ValueError(f"DeepSpeed config file {path} does not exist")
            return path
        if not isinstance(v, dict):
            raise ValueError("must be a mapping (the DeepSpeed config itself) or a path to a JSON file")
        return v

    def dsla_config(self) -> DSLAConfig:
        return self.dsla.to_dsla_config()


class ConvertConfig(TrainerSettings):
    """Everything `dsla-serve convert` needs: the base model and the artifact, and the trainer settings."""

    base_model: str = Field(description="local model folder, .gguf file, hub id, a reference model's short name "
                            "(smollm2-135m), or tiny:<arch>")
    output: Path | str = Field(description="artifact directory, or an object store URI (s3://bucket/path, "
                               "gs://...); an existing artifact of this config is resumed")

    @field_validator("base_model")
    @classmethod
    def _resolve_base_model(cls, v: str, info: ValidationInfo) -> str:
        try:
            return normalise_spec(v, (info.context or {}).get("base_dir"))
        except ModelSourceError as e:
            raise ValueError(str(e)) from None

    @field_validator("output")
    @classmethod
    def _resolve_output(cls, v: Path | str, info: ValidationInfo) -> Path | str:
        """A local directory resolved like every path here; an object store URI kept as written."""
        if is_uri(v):
            if mask(v) != v:
                raise ValueError(f"{mask(v)}: credentials do not belong in the URI; set them in the environment "
                                 "the storage library reads")
            return v.rstrip("/")
        return _resolve(v, info)

    def with_overrides(self, **changes: Any) -> "ConvertConfig":
        """A copy with top-level fields replaced (validated again), e.g. `depth=3`."""
        data = self.model_dump()
        data.update({k: v for k, v in changes.items() if v is not None})
        return parse_config(data)

    def settings(self) -> dict[str, Any]:
        """The `TrainerSettings` fields of this config (JSON-ready): what a policy's trainer section holds."""
        return self.model_dump(mode="json", exclude={"base_model", "output"})


def parse_config(data: Any, *, base_dir: str | os.PathLike | None = None, label: str = "<config>",
                 yaml_root=None) -> ConvertConfig:
    """Validate a plain dict into a ConvertConfig; relative paths resolve against `base_dir`."""
    return validate_model(ConvertConfig, data, ConfigError, label=label, root=yaml_root,
                          context={"base_dir": base_dir})


def load_config(path: str | os.PathLike) -> ConvertConfig:
    """Read and validate a convert YAML file. Raises ConfigError naming the file and each bad field."""
    return load_yaml_model(ConvertConfig, path, ConfigError)
