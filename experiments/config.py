"""Settings of the quality experiments, read from JSON (dataclasses: the GPU machine has no pydantic).

A config names `runs` (one chained conversion each: layer kind, order, DSLA settings, how deep to
chain, at which depths to evaluate) and `experiments` (which runs each table compares). Depths are
written as fractions of the teacher's layer count L ("L/4", "L/2", "3L/4", "L") or integers.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from dsla_serve.model import DSLAConfig
from dsla_serve.model.baselines import LAYER_KINDS
from dsla_serve.quality.evaluate import EvalSettings
from dsla_serve.quality.models import parse_depths
from recipes.teacher.batches import MixtureConfig

ORDER_METHODS = ("loss_delta", "retrieval_delta", "entropy", "forward", "reverse", "random")


@dataclass(frozen=True)
class LossWeights:
    """The trainer's terms (`dsla_serve.trainer.losses.distillation_loss`): mse, kl, ce and `answer_kl`,
    the KL at the batch's answer tokens alone."""

    mse: float = 1.0
    kl: float = 1.0
    ce: float = 0.0
    answer_kl: float = 0.0


@dataclass(frozen=True)
class FitSettings:
    """One layer's training (the same for every layer and run; a run may override train_qkvo)."""

    steps: int = 100
    lr: float = 1e-3
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    train_qkvo: bool = True
    calibrate_output: bool = True
    loss: LossWeights = LossWeights()


@dataclass(frozen=True)
class DistillSettings:
    """How each layer is fitted (`fit`), the training rows it sees (`mixture`, the teacher recipe's
    batch mixture) and how many validation windows score it. The JSON's `distill` section is flat: the
    fields of FitSettings, loss_mse / loss_kl / loss_ce, the fields of MixtureConfig and
    validation_windows."""

    fit: FitSettings = FitSettings()
    mixture: MixtureConfig = MixtureConfig(seq_len=2048, batch_size=8)
    validation_windows: int = 8


@dataclass(frozen=True)
class OrderSettings:
    probe_steps: int = 20
    calibration_sequences: int = 8
    calibration_len: int = 1024
    random_seed: int = 0
    answer_batches: int = 8  # retrieval_delta: held-out episode batches (distill.batch_size rows each) per probe


@dataclass(frozen=True)
class RunSpec:
    """One chained conversion. `dsla` overrides DSLAConfig fields; `train_qkvo`, `loss_answer_kl` and
    `steps` (per layer) override the distill section's. `seed` (default 0) offsets the distill
    section's seed for this run's training rows and random gate weights: runs that differ only in it
    measure the spread between seeds (the order and the evaluation stay the same)."""

    name: str
    kind: str = "dsla"
    order: str = "retrieval_delta"
    dsla: dict = field(default_factory=dict)
    train_qkvo: bool | None = None
    loss_answer_kl: float | None = None
    steps: int | None = None
    seed: int = 0
    depth: str = "L"
    eval_depths: tuple[str, ...] = ("L/4", "L/2", "3L/4", "L")
    label: str | None = None

    def dsla_config(self) -> DSLAConfig:
        return DSLAConfig.from_dict({**DSLAConfig().to_dict(), **self.dsla})

    def depths(self, num_layers: int) -> tuple[int, list[int]]:
        """(chain depth, evaluation depths) in layers."""
        chain = parse_depths(self.depth, num_layers)[-1]
        evals = parse_depths(",".join(self.eval_depths), num_layers)
        if evals[-1] > chain:
            raise ValueError(f"run {self.name!r}: evaluation depth {evals[-1]} is deeper than its chain ({chain})")
        return chain, [d for d in evals if d > 0]


@dataclass(frozen=True)
class ExperimentSpec:
    title: str
    runs: tuple[str, ...]
    question: str = ""


@dataclass(frozen=True)
class TargetPair:
    """A DSLA run and a single-state run that the issue's targets are checked on (in the report)."""

    dsla: str = "dsla"
    single: str = "gla"
    label: str = "DSLA vs the single gated state"


@dataclass(frozen=True)
class QualityConfig:
    distill: DistillSettings
    order: OrderSettings
    eval: EvalSettings
    runs: tuple[RunSpec, ...]
    experiments: dict
    targets: tuple[TargetPair, ...] = (TargetPair(),)

    def run(self, name: str) -> RunSpec:
        for r in self.runs:
            if r.name == name:
                return r
        raise KeyError(f"no run named {name!r}; runs: {[r.name for r in self.runs]}")


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


_LOSS_KEYS = {"loss_mse": "mse", "loss_kl": "kl", "loss_ce": "ce", "loss_answer_kl": "answer_kl"}


def _build_distill(data: dict, where: str) -> DistillSettings:
    """The flat `distill` section -> DistillSettings (unknown keys named, like `_build`)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    fit_keys = {f.name for f in dataclasses.fields(FitSettings)} - {"loss"}
    mixture_keys = {f.name for f in dataclasses.fields(MixtureConfig)}
    known = fit_keys | mixture_keys | set(_LOSS_KEYS) | {"validation_windows"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    loss = _build(LossWeights, {_LOSS_KEYS[k]: v for k, v in data.items() if k in _LOSS_KEYS}, where)
    fit = _build(FitSettings, {**{k: v for k, v in data.items() if k in fit_keys}, "loss": loss}, where)
    default = DistillSettings().mixture
    mixture = _build(MixtureConfig, {"seq_len": default.seq_len, "batch_size": default.batch_size,
                                     **{k: v for k, v in data.items() if k in mixture_keys}}, where)
    return DistillSettings(fit=fit, mixture=mixture,
                           validation_windows=data.get("validation_windows", DistillSettings.validation_windows))


def load_config(path: str | Path) -> QualityConfig:
    """Read and check a config; errors name the file and the field."""
    path = Path(path)
    raw = json.loads(path.read_text())
    unknown = sorted(set(raw) - {"distill", "order", "eval", "runs", "experiments", "targets", "comment"})
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}")
    ev = dict(raw.get("eval", {}))
    if "buckets" in ev:
        ev["buckets"] = tuple(tuple(b) for b in ev["buckets"])
    runs = tuple(_build(RunSpec, r, f"{path}: runs[{i}]") for i, r in enumerate(raw.get("runs", [])))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: run names repeat: {names}")
    for r in runs:
        if r.kind not in LAYER_KINDS:
            raise ValueError(f"{path}: run {r.name!r}: kind must be one of {LAYER_KINDS}, got {r.kind!r}")
        if r.order not in ORDER_METHODS:
            raise ValueError(f"{path}: run {r.name!r}: order must be one of {ORDER_METHODS}, got {r.order!r}")
        if r.loss_answer_kl is not None and r.loss_answer_kl < 0:
            raise ValueError(f"{path}: run {r.name!r}: loss_answer_kl must be >= 0, got {r.loss_answer_kl}")
        if r.steps is not None and (not isinstance(r.steps, int) or r.steps < 1):
            raise ValueError(f"{path}: run {r.name!r}: steps must be a whole number >= 1, got {r.steps!r}")
        if not isinstance(r.seed, int) or r.seed < 0:
            raise ValueError(f"{path}: run {r.name!r}: seed must be a whole number >= 0, got {r.seed!r}")
        try:
            r.dsla_config()
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: run {r.name!r}: dsla: {e}") from None
    experiments = {k: _build(ExperimentSpec, v, f"{path}: experiments.{k}")
                   for k, v in raw.get("experiments", {}).items()}
    for k, e in experiments.items():
        missing = [n for n in e.runs if n not in names]
        if missing:
            raise ValueError(f"{path}: experiments.{k} names unknown run(s) {missing}")
    targets = tuple(_build(TargetPair, t, f"{path}: targets[{i}]") for i, t in enumerate(raw.get("targets", [])))
    for i, t in enumerate(targets):
        missing = [n for n in (t.dsla, t.single) if n not in names]
        if missing:
            raise ValueError(f"{path}: targets[{i}] names unknown run(s) {missing}")
    return QualityConfig(distill=_build_distill(raw.get("distill", {}), f"{path}: distill"),
                         order=_build(OrderSettings, raw.get("order", {}), f"{path}: order"),
                         eval=_build(EvalSettings, ev, f"{path}: eval"), runs=runs, experiments=experiments,
                         targets=targets or (TargetPair(),))
