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

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..model.sources import GGUF_SUFFIX, ModelSourceError, normalise_spec, spec_kind

__all__ = [
    "FieldProblem", "ModelSection", "TrainerSection", "Resources", "Pool", "SLO", "Quality",
    "ControllerSettings", "HTTPSettings", "Policy", "policy_json_schema",
]

_NAME = r"^[a-z0-9][a-z0-9_-]{0,47}$"


class FieldProblem(ValueError):
    """A cross-field rule broken at `field` (a dotted path relative to the model that raised it)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


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


class Resources(_Section):
    """Ray resources of one actor or replica. Ray accepts a fraction of a GPU only below one GPU."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)

    @field_validator("num_gpus")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"{value} GPUs: above 1, Ray needs a whole number of GPUs")
        return value


class TrainerSection(_Section):
    """Chained distillation running in the background, publishing one layer at a time."""

    data: list[str] = Field(min_length=1, description="text files, folders or .jsonl files to train on")
    output_dir: str | None = Field(None, description="artifact directory to write when `artifact` is not "
                                                     "given (with `artifact`, layers are appended there)")
    order: Literal["retrieval_delta", "loss_delta", "entropy", "forward", "reverse", "list"] = "retrieval_delta"
    order_list: list[int] | None = Field(None, description="layer indices, required when order is list")
    depth: int = Field(ge=1, description="number of layers to convert in total (the depth to reach)")
    steps_per_layer: int = Field(200, ge=1)
    seq_len: int = Field(512, ge=8)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    w_mse: float = Field(1.0, ge=0)
    w_kl: float = Field(1.0, ge=0)
    w_ce: float = Field(0.0, ge=0)
    w_answer_kl: float = Field(1.0, ge=0, description="weight of the KL at the episodes' answer tokens")
    passkey_fraction: float = Field(0.25, ge=0, le=1, description="share of rows that are a passkey episode")
    recall_fraction: float = Field(0.1, ge=0, le=1, description="share of rows that are an associative-recall episode")
    train_qkvo: bool = True  # measured in docs/quality.md: the gates alone lose far more
    seed: int = Field(0, ge=0)
    deepspeed: Any = Field(None, description="DeepSpeed config: a mapping, or a path to a JSON file")
    serve_prompts_sample: bool = Field(False, description="also train on a sample of served prompts (opt-in)")
    serve_prompts_max: int = Field(1000, ge=1, le=100_000, description="most served prompts kept")
    resources: Resources = Resources(num_cpus=1.0, num_gpus=0.0)

    @field_validator("data")
    @classmethod
    def _resolve_data(cls, values: list[str], info: ValidationInfo) -> list[str]:
        for v in values:
            if not v:
                raise ValueError("empty path")
        return [_resolve_path(v, info) for v in values]

    @field_validator("output_dir")
    @classmethod
    def _resolve_output(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve_path(value, info)

    @field_validator("deepspeed")
    @classmethod
    def _deepspeed(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or isinstance(value, dict):
            return value
        if isinstance(value, str) and value:
            return _resolve_path(value, info)
        raise ValueError("must be a mapping (the DeepSpeed config itself) or a path to a JSON file")

    @model_validator(mode="before")
    @classmethod
    def _order_without_episodes(cls, data: Any) -> Any:
        """No order given and episodes off: loss_delta (the default without episodes, as in `convert`)."""
        if isinstance(data, dict) and "order" not in data and \
                data.get("passkey_fraction") == 0 and data.get("recall_fraction") == 0:
            return {**data, "order": "loss_delta"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TrainerSection:
        if self.order == "list":
            if not self.order_list:
                raise FieldProblem("order_list", "required when order is 'list'")
            if len(set(self.order_list)) != len(self.order_list) or min(self.order_list) < 0:
                raise FieldProblem("order_list", "must hold distinct layer indices >= 0")
            if len(self.order_list) < self.depth:
                raise FieldProblem("order_list", f"lists {len(self.order_list)} layers, fewer than depth {self.depth}")
        elif self.order_list is not None:
            raise FieldProblem("order_list", f"only allowed when order is 'list' (order is {self.order!r})")
        if self.passkey_fraction + self.recall_fraction > 1:
            raise FieldProblem("passkey_fraction", f"passkey_fraction + recall_fraction is "
                                                   f"{self.passkey_fraction + self.recall_fraction}, more than 1")
        if self.order == "retrieval_delta" and self.passkey_fraction == self.recall_fraction == 0:
            raise FieldProblem("order", "retrieval_delta scores layers on retrieval episodes, and passkey_fraction "
                                        "and recall_fraction are both 0: choose another order or turn episodes on")
        if self.w_mse == self.w_kl == self.w_ce == 0:
            raise FieldProblem("w_mse", "w_mse, w_kl and w_ce are all 0: nothing to train on")
        return self


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
    artifact: str | None = Field(None, min_length=1, description="existing DSLA artifact directory")
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
        return None if value is None else _resolve_path(value, info)

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
            if self.artifact is None and self.trainer.output_dir is None:
                raise FieldProblem("trainer.output_dir", "required when no artifact is given: where to write layers")
            if self.artifact is not None and self.trainer.output_dir is not None:
                raise FieldProblem("trainer.output_dir", "not allowed with artifact: the trainer appends to artifact")
        for i, pool in enumerate(self.pools):
            cap = self.quality.max_depth if self.quality is not None else 0
            if cap is not None and pool.depth > cap:
                raise FieldProblem(f"pools.{i}.depth", f"{pool.depth} is beyond quality.max_depth {cap}: "
                                                       "this pool could never serve at its depth")
            if self.trainer is not None and self.artifact is None and pool.depth > self.trainer.depth:
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
