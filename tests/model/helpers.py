"""Shared helpers of the model tests: tiny random models and padded batches."""

from __future__ import annotations

import torch

from dsla_serve.model.config import DSLAConfig
from dsla_serve.model.tiny import build_tiny_model

ARCHS = ("llama", "mistral", "qwen2")
# Small enough for 2 shared cores: hidden 64, 4 layers, 4 query / 2 key-value heads, vocab 128.
TINY = dict(hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2, vocab_size=128)


def tiny(arch: str = "llama", seed: int = 0, **overrides):
    """A tiny random causal LM of `arch` in eval mode (float32, CPU)."""
    return build_tiny_model(arch, seed=seed, **{**TINY, **overrides})


def left_padded(prompts: list[list[int]], pad_id: int):
    """-> (input_ids [B, L], attention_mask [B, L]) with every prompt right-aligned."""
    L = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def randomize_dsla(model, scale: float = 0.5, seed: int = 0) -> None:
    """Give every DSLA twin non-trivial gates and mix (they start input-independent)."""
    from dsla_serve.model import dsla_layers

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for twin in dsla_layers(model).values():
            for p in twin.own_parameters().values():
                p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * scale)


# The artifact tests' shared set-up: a layer config, a conversion order of the tiny model, fixed ids.
CONFIG = DSLAConfig(gate_rank=8)
ORDER = [2, 0, 3]
IDS = torch.randint(3, 128, (2, 17), generator=torch.Generator().manual_seed(0))


def logits(model):
    """The model's logits [2, 17, vocab] for IDS, without gradients."""
    with torch.no_grad():
        return model(IDS).logits
