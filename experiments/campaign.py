"""A campaign config: runs of `dsla-serve convert` and `dsla-serve eval` to compare, as YAML.

    base_model: smollm2-135m
    convert:                      # the trainer's own settings (TrainerSettings: docs/trainer.md), every run's
      data: {paths: [books/train], seq_len: 1024}
      training: {steps: 100}
    eval:                         # `dsla-serve eval` options (EvalSettings' names), every run's
      data: books/held-out        # held-out text: a token corpus, a folder of books (+ split) or a file
      max_windows: 32
    runs:
      - {name: dsla_s0, depth: 3L/4, eval_depths: [L/4, L/2, 3L/4]}
      - {name: gla_s0, depth: L/2, eval_depths: [L/2], order_from: dsla_s0, convert: {layer_kind: gla}}
    experiments: {claim: {title: ..., runs: [dsla_s0, gla_s0]}}
    targets: {dsla: [dsla_s0], single: [gla_s0]}

A run's `convert` is merged (key by key, recursively) over the campaign's; `order_from: R` converts
in the order run R's artifact measured (the driver copies it into `order: {method: list}` once R's
manifest exists). Depths are integers or fractions of the model's layer count L ("L/2", "3L/4").
Relative paths resolve against the YAML file's directory. Loaded by the one YAML loader
(`dsla_serve.configfile`): errors name the file, the field and the line.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from dsla_serve.configfile import ConfigFileError, FieldProblem, load_yaml_model, validate_model
from dsla_serve.trainer.config import ConvertConfig, TrainerSettings


class CampaignError(ConfigFileError):
    """A campaign config that cannot be used; one line per problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def merge(base: dict, changes: dict) -> dict:
    """`base` with `changes` laid over it: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else \
            copy.deepcopy(value)
    return out


class EvalOptions(_Strict):
    """What `dsla-serve eval` measures for every run (the fields of `quality.evaluate.EvalSettings`)."""

    data: Path = Field(description="held-out text: a token corpus folder, a folder of .txt books or a text file")
    split: Path | None = Field(None, description="book split JSON whose 'validation' books are used (books folder)")
    context: int = Field(4096, ge=2)
    buckets: list[int] = Field([0, 256, 1024, 4096], description="position bucket edges")
    max_windows: int = Field(32, ge=0, description="perplexity windows (0 = all)")
    passkey_lengths: list[int] = [1024, 2048, 4096]
    passkey_episodes: int = Field(40, ge=1)
    recall_pairs: list[int] = [16, 32, 64]
    recall_episodes: int = Field(30, ge=1)
    batch_size: int = Field(4, ge=1)
    seed: int = 1234

    @field_validator("data", "split")
    @classmethod
    def _resolve(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        base = (info.context or {}).get("base_dir")
        return v if v is None or v.is_absolute() or base is None else Path(os.path.normpath(Path(base) / v))

    def cli_args(self) -> list[str]:
        """The `dsla-serve eval` arguments for these options."""
        join = lambda xs: ",".join(str(x) for x in xs)  # noqa: E731
        args = ["--data", str(self.data), "--context", str(self.context), "--buckets", join(self.buckets),
                "--max-windows", str(self.max_windows), "--passkey-lengths", join(self.passkey_lengths),
                "--passkey-episodes", str(self.passkey_episodes), "--mqar-pairs", join(self.recall_pairs),
                "--mqar-episodes", str(self.recall_episodes), "--batch-size", str(self.batch_size),
                "--seed", str(self.seed)]
        return args + (["--split", str(self.split)] if self.split else [])


class RunSpec(_Strict):
    """One conversion: its settings (over the campaign's), how deep, where it is evaluated."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    label: str | None = None
    convert: dict[str, Any] = Field(default_factory=dict, description="TrainerSettings fields over the campaign's")
    depth: str | int = Field("L", description="layers to convert: an integer or a fraction of L (L/2, 3L/4)")
    eval_depths: list[str | int] = Field(["L/2"], description="depths to evaluate (integers or fractions of L; "
                                         "the base model, depth 0, is evaluated once for the whole campaign)")
    order_from: str | None = Field(None, description="convert in the order this run's artifact measured")


class Targets(_Strict):
    """The issue's targets are checked on each `dsla` run; `single` runs (one per seed) are what DSLA must
    beat beyond the spread between seeds."""

    dsla: list[str] = Field(default_factory=list)
    single: list[str] = Field(default_factory=list)


class Experiment(_Strict):
    title: str
    runs: list[str]
    question: str = ""


class Campaign(_Strict):
    """A whole campaign (module docstring)."""

    comment: str = ""
    base_model: str
    convert: dict[str, Any] = Field(description="TrainerSettings shared by every run")
    eval: EvalOptions
    runs: list[RunSpec] = Field(min_length=1)
    experiments: dict[str, Experiment] = Field(default_factory=dict)
    targets: Targets = Targets()

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> "Campaign":
        names = [r.name for r in self.runs]
        for i, run in enumerate(self.runs):
            if names.index(run.name) != i:
                raise FieldProblem(f"runs.{i}.name", f"{run.name!r} repeats runs.{names.index(run.name)}")
            if run.order_from is not None and run.order_from not in names[:i]:
                raise FieldProblem(f"runs.{i}.order_from", f"{run.order_from!r} is not a run listed before this one")
            try:  # the run's merged settings, validated by the trainer's own schema
                validate_model(TrainerSettings, merge(self.convert, run.convert), CampaignError,
                               label=f"runs.{i} ({run.name})", context=info.context)
            except CampaignError as e:
                raise FieldProblem(f"runs.{i}.convert", "; ".join(e.problems)) from None
        for key, exp in self.experiments.items():
            missing = [n for n in exp.runs if n not in names]
            if missing:
                raise FieldProblem(f"experiments.{key}.runs", f"unknown run(s) {missing}")
        missing = [n for n in self.targets.dsla + self.targets.single if n not in names]
        if missing:
            raise FieldProblem("targets", f"unknown run(s) {missing}")
        return self

    def run(self, name: str) -> RunSpec:
        for r in self.runs:
            if r.name == name:
                return r
        raise KeyError(f"no run named {name!r}; runs: {[r.name for r in self.runs]}")

    def convert_config(self, run: RunSpec, output: Path, depth: int, base_dir: Path) -> ConvertConfig:
        """The `dsla-serve convert` config of `run` (settings merged, paths absolute)."""
        data = merge(self.convert, run.convert)
        data.update(base_model=self.base_model, output=str(output), depth=depth)
        return validate_model(ConvertConfig, data, CampaignError, label=run.name, context={"base_dir": base_dir})


def load_campaign(path: str | os.PathLike) -> tuple[Campaign, Path]:
    """(campaign, its directory: what relative paths in it are taken from)."""
    return load_yaml_model(Campaign, path, CampaignError), Path(path).resolve().parent
