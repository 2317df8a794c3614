"""The DeepSpeed config of one layer's engine: the config the user gave, completed (`optim.py` builds the engine).

The user's DeepSpeed config (a dict or a JSON file, from `ConvertConfig.deepspeed`) is passed
through; the trainer fills in what it owns and checks what would conflict:

- `train_micro_batch_size_per_gpu`, `gradient_accumulation_steps` (from `training`): set, or must agree;
- `gradient_clipping` (from `training.grad_clip`) unless given;
- precision follows the model dtype: `bf16` / `fp16` enabled for such models, neither for fp32
  (the CPU default); a contradicting section is an error;
- ZeRO stage 0, 1 or 2 (stage 3 would partition the frozen teacher weights the trainer reads);
- no `optimizer` section: a torch AdamW over the trainable parameters (lr, betas, weight decay from
  `training`), given to DeepSpeed as a client optimizer. This avoids JIT-compiling DeepSpeed's fused
  Adam (minutes on a CPU, a CUDA toolkit on a GPU); ZeRO still partitions its state and DeepSpeed
  still does accumulation, clipping, mixed precision and the data-parallel gradient all-reduce.
  An `optimizer` section is honoured as DeepSpeed documents it;
- no `scheduler` section: warm-up + cosine (`schedule.lr_multiplier`) as a client LambdaLR, which
  DeepSpeed steps once per optimiser step.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pydantic-free at run time: the GPU image imports these modules without it
    from .config import TrainingConfig

_PRECISION = {torch.bfloat16: "bf16", torch.float16: "fp16"}


class DeepSpeedConfigError(ValueError):
    """The DeepSpeed config contradicts the trainer's config; the message names both fields."""


def read_user_config(source: dict | str | Path | None) -> dict:
    """The user's DeepSpeed config as a fresh dict (a JSON path is read)."""
    if source is None:
        return {}
    if isinstance(source, dict):
        return copy.deepcopy(source)
    path = Path(source)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise DeepSpeedConfigError(f"cannot read DeepSpeed config {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise DeepSpeedConfigError(f"DeepSpeed config {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DeepSpeedConfigError(f"DeepSpeed config {path} must hold a JSON object")
    return data


def complete_config(user: dict, training: TrainingConfig, model_dtype: torch.dtype, world_size: int) -> dict:
    """The DeepSpeed config dict for one layer's engine (see the module docstring for the rules)."""
    cfg = copy.deepcopy(user)

    def own(key: str, value, field: str) -> None:
        if key in cfg and cfg[key] != value:
            raise DeepSpeedConfigError(f"deepspeed.{key} = {cfg[key]!r} contradicts {field} = {value!r}; "
                                       f"set it in one place")
        cfg[key] = value

    own("train_micro_batch_size_per_gpu", training.micro_batch_size, "training.micro_batch_size")
    own("gradient_accumulation_steps", training.grad_accumulation, "training.grad_accumulation")
    if "train_batch_size" in cfg:
        own("train_batch_size", training.micro_batch_size * training.grad_accumulation * world_size,
            "training.micro_batch_size * grad_accumulation * world size")
    cfg.setdefault("gradient_clipping", training.grad_clip or 0.0)
    cfg.setdefault("steps_per_print", 10**9)
    cfg.setdefault("wall_clock_breakdown", False)

    stage = cfg.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise DeepSpeedConfigError(f"deepspeed.zero_optimization.stage = {stage!r}: use 0, 1 or 2 (stage 3 "
                                   "partitions the frozen teacher weights, which every step reads whole)")

    wanted = _PRECISION.get(model_dtype)
    for section in ("bf16", "fp16"):
        enabled = bool(cfg.get(section, {}).get("enabled", False))
        if enabled and section != wanted:
            raise DeepSpeedConfigError(f"deepspeed.{section}.enabled is true but the model is {model_dtype}; "
                                       f"set `dtype` to match or drop the {section} section")
    if wanted is not None:
        cfg.setdefault(wanted, {})["enabled"] = True
    return cfg
