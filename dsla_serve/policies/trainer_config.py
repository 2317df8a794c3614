"""The policy's `trainer` section in the shape of the trainer's own config (`dsla-serve convert` YAML).

The controller validates this dict with `dsla_serve.trainer.config.parse_config` and hands it to the
trainer actor; `policies` never imports the trainer (it would pull in torch).
"""

from __future__ import annotations

from typing import Any

from .schema import Policy

__all__ = ["convert_config_data"]


def convert_config_data(policy: Policy) -> dict[str, Any]:
    """A `ConvertConfig`-shaped dict (absolute paths) for the policy's trainer.

    The base model is `model.path`; the output is the policy's artifact directory (the trainer
    continues an existing artifact there). Fields the policy does not set keep the trainer's defaults.
    Raises ValueError when the policy has no trainer section.
    """
    trainer = policy.trainer
    if trainer is None:
        raise ValueError("the policy has no trainer section")
    order: dict[str, Any] = {"method": trainer.order}
    if trainer.order_list is not None:
        order["layers"] = list(trainer.order_list)
    data: dict[str, Any] = {
        "base_model": policy.model.path,
        "output": policy.artifact_dir,
        "depth": trainer.depth,
        "seed": trainer.seed,
        "dtype": policy.model.dtype,
        "data": {"paths": list(trainer.data), "seq_len": trainer.seq_len,
                 "episodes": {"passkey_fraction": trainer.passkey_fraction,
                              "recall_fraction": trainer.recall_fraction}},
        "order": order,
        "training": {"steps": trainer.steps_per_layer, "lr": trainer.lr, "micro_batch_size": trainer.batch_size,
                     "train_qkvo": trainer.train_qkvo,
                     "loss": {"mse": trainer.w_mse, "kl": trainer.w_kl, "ce": trainer.w_ce,
                              "answer_kl": trainer.w_answer_kl}},
    }
    if trainer.deepspeed is not None:
        data["deepspeed"] = trainer.deepspeed
    return data
