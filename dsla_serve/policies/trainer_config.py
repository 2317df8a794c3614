"""The policy's `trainer` section as a `dsla-serve convert` config: the same settings, plus the base
model and the artifact, which the policy names elsewhere.

The section is the trainer's own `TrainerSettings` (`dsla_serve.trainer.config`, torch-free), so
this is no translation of fields: it adds `base_model` (model.path) and `output` (the artifact
directory), and the model's dtype when the section leaves `dtype` at auto. The controller validates
the result with `dsla_serve.trainer.config.parse_config` and hands it to the trainer actor.
"""

from __future__ import annotations

from typing import Any

from .schema import Policy

__all__ = ["convert_config_data"]

# Serving-only fields of the trainer section: not part of the trainer's config.
SERVING_FIELDS = ("config", "output_dir", "serve_prompts_sample", "serve_prompts_max", "resources")


def convert_config_data(policy: Policy) -> dict[str, Any]:
    """A `ConvertConfig`-shaped dict (absolute paths) for the policy's trainer.

    The base model is `model.path`; the output is the policy's artifact directory (the trainer
    continues an existing artifact there). Raises ValueError when the policy has no trainer section.
    """
    trainer = policy.trainer
    if trainer is None:
        raise ValueError("the policy has no trainer section")
    data = trainer.model_dump(mode="json", exclude=set(SERVING_FIELDS))
    data["base_model"] = policy.model.path
    data["output"] = policy.artifact_dir
    if data["dtype"] == "auto":
        data["dtype"] = policy.model.dtype
    return data
