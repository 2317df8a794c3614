"""The serving policy: one YAML file, validated by these pydantic models.

Every section forbids unknown keys and uses strict types (YAML `"8"` is not the integer 8; `2.0` is not
a replica count). Cross-field rules raise `FieldProblem`, which names the field so that the loader can
report `pools.1.initial_replicas: ...` rather than just `pools.1`.

Relative paths are resolved against the directory given as `context={"base_dir": ...}` when validating
(`load_policy` passes the YAML file's directory); without a context they are kept as written. Which
values count as paths is listed in docs/policies.md.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from ..configfile import FieldProblem
from ..model.sources import GGUF_SUFFIX, ModelSourceError, normalise_spec, spec_kind
from ..model.storage import is_uri, location_key, mask
from ..trainer.config import TrainerSettings

__all__ = [
    "FieldProblem", "ModelSection", "TrainerSection", "Resources", "Pool", "SLO", "Quality",
    "ControllerSettings", "HTTPSettings", "Policy", "policy_json_schema",
]

_NAME = r"^[a-z0-9][a-z0-9_-]{0,47}$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _resolve_path(value: str, info: ValidationInfo) -> str:
    """`~` expanded; a relative path joined to the context's `base_dir` (if any) and normalised."""
    value = os.path.expanduser(value)
    base_dir = (info.context or {}).get("base_dir")
    if base_dir is not None and not os.path.isabs(value):
        value = os.path.normpath(os.path.join(str(base_dir), value))
    return value


class ModelSection(_Section):
    """The base (teacher) model every replica loads."""

    path: str = Field(min_length=1, description="local folder (write ./dir for a relative one), .gguf file, "
                      "hub id (org/name), a reference model's short name (smollm2-135m), or tiny:<arch> for a "
                      "tiny in-memory model")
    tokenizer: str | None = Field(None, min_length=1, description="tokenizer path or hub id; default: the model's")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int | None = Field(None, ge=16, description="longest prompt + completion in tokens")

    @field_validator("path", "tokenizer")
    @classmethod
    def _resolve_local(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        try:
            return normalise_spec(value, (info.context or {}).get("base_dir"))
        except ModelSourceError as e:
            raise ValueError(str(e)) from None

    @property
    def tiny_arch(self) -> str | None:
        """`llama` for `tiny:llama`; None for a real model."""
        return self.path.split(":", 1)[1] if self.path.startswith("tiny:") else None

    @property
    def is_local_path(self) -> bool:
        """A local folder or .gguf file (as opposed to a hub id, a short name or tiny:<arch>)."""
        return spec_kind(self.path) in ("folder", "gguf")


def _resolve_location(value: str, info: ValidationInfo) -> str:
    """An artifact location: an object store URI as written (without a trailing slash; no credentials in
    it), else a local path resolved like `_resolve_path`."""
    if not is_uri(value):
        return _resolve_path(value, info)
    if mask(value) != value:
        raise ValueError(f"{mask(value)}: credentials do not belong in the URI (it is logged and written into "
                         "Serve configs); set them in the environment the storage library reads")
    return value.rstrip("/")


_RAY_BUILTIN_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}


class Resources(_Section):
    """Ray resources of one actor or replica. Ray accepts a fraction of a GPU only below one GPU.

    `custom`: Ray custom resources (`ray start --resources '{"trainer_node": 1}'`), to place the actor or
    replica on the nodes that have them."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    custom: dict[str, float] = Field(default_factory=dict, description="Ray custom resources, e.g. "
                                     "{gpu_node: 1} for nodes started with --resources '{\"gpu_node\": 1}'")

    @field_validator("custom")
    @classmethod
    def _custom(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if not name or name in _RAY_BUILTIN_RESOURCES or name.startswith("node:"):
                raise ValueError(f"{name!r}: not a custom resource (use num_cpus / num_gpus; Ray reserves "
                                 f"{', '.join(sorted(_RAY_BUILTIN_RESOURCES))} and node:<ip>)")
            if amount <= 0:
                raise ValueError(f"{name}: {amount} must be > 0")
        return value

    def ray_options(self) -> dict[str, Any]:
        """These resources as Ray actor options (num_cpus always, num_gpus and resources when set)."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            options["num_gpus"] = self.num_gpus
        if self.custom:
            options["resources"] = dict(self.custom)
        return options

    @field_validator("num_gpus")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"{value} GPUs: above 1, Ray needs a whole number of GPUs")
        return value


class TrainerSection(TrainerSettings):
    """Chained distillation running in the background, publishing one layer at a time.

    The trainer's own settings (`dsla_serve.trainer.config.TrainerSettings`, the schema of a
    `dsla-serve convert` file less `base_model` and `output`, which the policy gives: `model.path` and
    the artifact directory), written here or read from a convert file with `config`, plus what only
    serving needs (where to write without an `artifact`, served-prompt sampling, Ray resources).
    """

    config: Path | None = Field(None, exclude=True, description="a dsla-serve convert YAML file whose settings "
                                "the trainer uses (then no other trainer setting may be given here); its "
                                "base_model must name model.path and its output is the artifact written")
    output_dir: str | None = Field(None, description="artifact directory or object store URI (s3://, gs://) to "
                                   "write when `artifact` is not given (with `artifact`, layers are appended there)")
    serve_prompts_sample: bool = Field(False, description="also train on a sample of served prompts (opt-in)")
    serve_prompts_max: int = Field(1000, ge=1, le=100_000, description="most served prompts kept")
    resources: Resources = Resources(num_cpus=1.0, num_gpus=0.0)
    _config_base_model: str | None = PrivateAttr(None)

    @model_validator(mode="wrap")
    @classmethod
    def _from_config_file(cls, data: Any, handler, info: ValidationInfo) -> TrainerSection:
        """With `config`, the settings come from that convert file (read with the convert schema)."""
        if not isinstance(data, dict) or data.get("config") is None:
            return handler(data)
        from ..trainer.config import ConfigError, load_config

        path = Path(_resolve_path(os.fspath(data["config"]), info))
        given = sorted(k for k in data if k in TrainerSettings.model_fields or k == "output_dir")
        if given:
            raise FieldProblem(given[0], f"not allowed with trainer.config ({path}): set it in that file")
        try:
            loaded = load_config(path)
        except ConfigError as e:
            raise FieldProblem("config", "; ".join(e.problems)) from None
        section = handler({**loaded.settings(), **data, "output_dir": str(loaded.output)})
        section._config_base_model = loaded.base_model
        return section

    @field_validator("output_dir")
    @classmethod
    def _resolve_output(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve_location(value, info)


class Pool(_Section):
    """Replicas serving at one conversion depth. Depth 0 is the original model."""

    name: str = Field(pattern=_NAME, description="lower case letters, digits, - and _")
    depth: int = Field(ge=0)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int = Field(description="default: min_replicas", ge=0)
    resources: Resources = Resources()
    max_concurrent_requests: int = Field(8, ge=1, description="requests one replica runs at once")

    @model_validator(mode="before")
    @classmethod
    def _default_initial(cls, data: Any) -> Any:
        if isinstance(data, dict) and "initial_replicas" not in data:
            low = data.get("min_replicas", 1)
            data = {**data, "initial_replicas": low if type(low) is int else 1}
        return data

    @model_validator(mode="after")
    def _ordered(self) -> Pool:
        if self.min_replicas > self.max_replicas:
            raise FieldProblem("min_replicas", f"{self.min_replicas} is above max_replicas {self.max_replicas}")
        if not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise FieldProblem("initial_replicas", f"{self.initial_replicas} is outside "
                                                   f"[min_replicas, max_replicas] = [{self.min_replicas}, {self.max_replicas}]")
        return self


class SLO(_Section):
    """Latency targets, as 95th percentiles over the controller's window."""

    ttft_p95_ms: float = Field(gt=0, description="time to first token")
    tpot_p95_ms: float = Field(gt=0, description="time per output token after the first")
    e2e_p95_ms: float | None = Field(None, gt=0, description="whole request")

    def missed_targets(self, ttft_s: float | None, tpot_s: float | None, e2e_s: float, ok: bool = True) -> list[str]:
        """The targets one request missed, named as here (["failed"] for a failed request); a request
        meets the SLO when this is empty. tpot_s None: one token or less; ttft_s None: no token."""
        if not ok:
            return ["failed"]
        missed = []
        if ttft_s is not None and ttft_s * 1e3 > self.ttft_p95_ms:
            missed.append("ttft_p95_ms")
        if tpot_s is not None and tpot_s * 1e3 > self.tpot_p95_ms:
            missed.append("tpot_p95_ms")
        if self.e2e_p95_ms is not None and e2e_s * 1e3 > self.e2e_p95_ms:
            missed.append("e2e_p95_ms")
        return missed


class Quality(_Section):
    """How deep the served model may be: the quality floor."""

    max_ppl_ratio: float | None = Field(None, ge=1.0, description="largest perplexity ratio to the base model")
    max_depth: int | None = Field(None, ge=0, description="explicit cap on the depth")

    @model_validator(mode="after")
    def _some_limit(self) -> Quality:
        if self.max_ppl_ratio is None and self.max_depth is None:
            raise FieldProblem("", "set max_ppl_ratio and/or max_depth")
        return self


class ControllerSettings(_Section):
    """Cadence and damping of the policy actor."""

    interval_s: float = Field(5.0, gt=0, description="seconds between decisions")
    window_s: float = Field(60.0, gt=0, description="metrics window the percentiles are taken over")
    cooldown_s: float = Field(30.0, ge=0, description="least seconds between two changes")
    hysteresis: float = Field(0.2, ge=0, lt=1, description="scale back only below (1 - hysteresis) * target")
    min_samples: int = Field(20, ge=1, description="requests in the window needed to trust its percentiles")
    traffic_step: float = Field(0.25, gt=0, le=1, description="fraction of all traffic moved per change")
    max_cache_usage: float = Field(0.9, gt=0, le=1, description="KV cache use treated like an SLO target")

    @model_validator(mode="after")
    def _window(self) -> ControllerSettings:
        if self.window_s < self.interval_s:
            raise FieldProblem("window_s", f"{self.window_s} is shorter than interval_s {self.interval_s}")
        return self


class HTTPSettings(_Section):
    """The OpenAI-compatible endpoint."""

    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8000, ge=1, le=65535)
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="environment variable holding the API key")
    max_prompt_tokens: int = Field(4096, ge=1)
    max_tokens_limit: int = Field(1024, ge=1, description="largest max_tokens a request may ask for")
    queue_cap: int = Field(256, ge=1, description="requests waiting at once before 429/503")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="larger request bodies get 413 before "
                                "they are read")
    model_name: str | None = Field(None, min_length=1, description="served model name; default: from model.path")


def default_model_name(model_path: str) -> str:
    """`tiny:llama` -> `tiny-llama`; a short name -> itself; a folder -> its last component; a GGUF file
    -> its name without `.gguf`; a hub id -> itself."""
    kind = spec_kind(model_path)
    if kind == "tiny":
        return model_path.replace(":", "-", 1)
    if kind == "folder":
        return os.path.basename(os.path.normpath(os.path.expanduser(model_path))) or model_path
    if kind == "gguf":
        return os.path.basename(model_path)[: -len(GGUF_SUFFIX)]
    return normalise_spec(model_path)


class Policy(_Section):
    """A whole serving policy. See docs/policies.md for every field and how decisions are made."""

    name: str = Field("dsla-serve", pattern=_NAME, description="application name (Ray Serve app, logs)")
    model: ModelSection
    artifact: str | None = Field(None, min_length=1, description="DSLA artifact: a directory, or an object store "
                                 "URI (s3://bucket/path, gs://bucket/path) that every node reads")
    trainer: TrainerSection | None = None
    pools: list[Pool] = Field(min_length=1)
    slo: SLO
    quality: Quality | None = None
    controller: ControllerSettings = ControllerSettings()
    http: HTTPSettings = HTTPSettings()

    @model_validator(mode="before")
    @classmethod
    def _default_http(cls, data: Any) -> Any:
        """Fill `http.model_name` from the model path as the user wrote it (before path resolution)."""
        if not isinstance(data, dict):
            return data
        http = data.get("http", {})
        model = data.get("model")
        if isinstance(http, dict) and http.get("model_name") is None:
            path = model.get("path") if isinstance(model, dict) else None
            if isinstance(path, str) and path:
                data = {**data, "http": {**http, "model_name": default_model_name(path)}}
        return data

    @field_validator("artifact")
    @classmethod
    def _resolve_artifact(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve_location(value, info)

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        names = [p.name for p in self.pools]
        depths = [p.depth for p in self.pools]
        for i, pool in enumerate(self.pools):
            if names.index(pool.name) != i:
                raise FieldProblem(f"pools.{i}.name", f"{pool.name!r} is already the name of pools.{names.index(pool.name)}")
            if depths.index(pool.depth) != i:
                raise FieldProblem(f"pools.{i}.depth", f"{pool.depth} is already the depth of pools.{depths.index(pool.depth)}")
        deepest = max(depths)
        if deepest > 0:
            if self.artifact is None and self.trainer is None:
                raise FieldProblem("artifact", f"pools go to depth {deepest}: give an artifact directory, "
                                               "a trainer section, or both")
            if self.quality is None:
                raise FieldProblem("quality", f"pools go to depth {deepest}: set quality.max_ppl_ratio "
                                              "and/or quality.max_depth")
        if self.trainer is not None:
            source = self.trainer._config_base_model
            if source is not None and source != self.model.path:
                raise FieldProblem("trainer.config", f"{self.trainer.config}: base_model {source!r} is not model.path "
                                                     f"{self.model.path!r}")
            if self.artifact is None and self.trainer.output_dir is None:
                raise FieldProblem("trainer.output_dir", "required when no artifact is given: where to write layers")
            if self.artifact is not None and self.trainer.output_dir is not None and \
                    (self.trainer.config is None or location_key(self.trainer.output_dir) != location_key(self.artifact)):
                raise FieldProblem("trainer.output_dir" if self.trainer.config is None else "trainer.config",
                                   "not allowed with artifact: the trainer appends to artifact" if self.trainer.config
                                   is None else f"{self.trainer.config}: output {self.trainer.output_dir} is not the "
                                   f"policy's artifact {self.artifact}")
            if self.trainer.serve_prompts_sample and is_uri(self.artifact_dir):
                raise FieldProblem("trainer.serve_prompts_sample", "needs a local artifact directory (the ingress "
                                   "writes the sample beside the layers); the artifact is an object store URI")
        for i, pool in enumerate(self.pools):
            cap = self.quality.max_depth if self.quality is not None else 0
            if cap is not None and pool.depth > cap:
                raise FieldProblem(f"pools.{i}.depth", f"{pool.depth} is beyond quality.max_depth {cap}: "
                                                       "this pool could never serve at its depth")
            if self.trainer is not None and self.trainer.depth is not None and self.artifact is None and \
                    pool.depth > self.trainer.depth:
                raise FieldProblem(f"pools.{i}.depth", f"{pool.depth} is beyond trainer.depth {self.trainer.depth} "
                                                       "and there is no artifact: it could never be reached")
        limit = self.model.max_model_len
        if limit is not None and self.http.max_prompt_tokens >= limit:
            raise FieldProblem("http.max_prompt_tokens", f"{self.http.max_prompt_tokens} leaves no room for "
                                                         f"output within model.max_model_len {limit}")
        return self

    @property
    def artifact_dir(self) -> str | None:
        """Where replicas read layers from: `artifact`, else the trainer's `output_dir`, else None."""
        if self.artifact is not None:
            return self.artifact
        return self.trainer.output_dir if self.trainer is not None else None

    def pool(self, name: str) -> Pool:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(f"no pool named {name!r}; pools: {', '.join(p.name for p in self.pools)}")

    @property
    def pools_by_depth(self) -> list[Pool]:
        """Pools from the shallowest (most accurate) to the deepest (fastest)."""
        return sorted(self.pools, key=lambda p: p.depth)


def policy_json_schema() -> dict[str, Any]:
    """JSON Schema of the policy file (for editors and docs)."""
    return Policy.model_json_schema()
