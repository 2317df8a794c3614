"""A cheap identity of a base model, so an artifact is never applied to the wrong one.

sha256 over: the architecture fields of the config, every base parameter's name and shape (in
`named_parameters` order), and a content sample of 16 evenly spaced values per parameter (indices in
integer arithmetic, so the fingerprint is the same on every host, CPU or GPU, at any size). DSLA twins
(converted layers) are left out, so converting layers does not change the fingerprint.

The dtype is deliberately left out and the sampled values are rounded to bfloat16 before hashing:
the same checkpoint loaded in float32 (distillation) or bfloat16 (serving) has one fingerprint.
The fingerprint is independent of the transformers version (only plain config integers are used).
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from .attention import DSLAAttention

# Plain integers every 5.x Llama/Mistral/Qwen2 config carries (head_dim is not one: Qwen2's config may
# leave it None); parameter shapes pin down the rest.
CONFIG_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "vocab_size")
SAMPLES_PER_PARAMETER = 16


def _config_summary(model: nn.Module) -> dict:
    config = getattr(model, "config", None)
    return {name: getattr(config, name, None) for name in CONFIG_FIELDS}


def sample_indices(numel: int, count: int = SAMPLES_PER_PARAMETER) -> list[int]:
    """`count` evenly spaced flat indices from 0 to numel - 1 (both ends included), in integer
    arithmetic: floor(i * (numel - 1) / (count - 1)). Float sample points round differently above 2^24
    elements and between CPU instruction sets; integers are the same on every host and device."""
    count = min(count, numel)
    if count <= 1:
        return [0] * count
    return [i * (numel - 1) // (count - 1) for i in range(count)]


def _sample(p: torch.Tensor) -> bytes:
    flat = p.detach().reshape(-1)
    if flat.numel() == 0 or flat.device.type == "meta":
        return b""
    idx = torch.tensor(sample_indices(flat.numel()), dtype=torch.long, device=flat.device)
    values = flat[idx].float().to(torch.bfloat16).view(torch.int16)
    return values.cpu().numpy().tobytes()


def base_parameters(model: nn.Module):
    """(name, parameter) of the base model, without the parameters of DSLA twins."""
    twin_prefixes = tuple(f"{name}." for name, module in model.named_modules() if isinstance(module, DSLAAttention))
    for name, p in model.named_parameters():
        if not name.startswith(twin_prefixes):
            yield name, p


def model_fingerprint(model: nn.Module) -> str:
    """sha256 hex digest identifying the base model (see the module docstring for what it covers)."""
    h = hashlib.sha256()
    h.update(json.dumps(_config_summary(model), sort_keys=True).encode())
    for name, p in base_parameters(model):
        h.update(f"\n{name}:{list(p.shape)}:".encode())
        h.update(_sample(p))
    return h.hexdigest()
