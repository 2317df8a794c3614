"""Shared helpers of the replica tests: tiny converted models and Hugging Face references."""

from __future__ import annotations

import torch

from dsla_serve.model import convert, dsla_layers, set_depth
from dsla_serve.model.tiny import build_tiny_model
from dsla_serve.model.tiny_tokenizer import build_byte_tokenizer

ORDER = [3, 1, 0, 2]  # conversion order of the 4-layer tiny models


def tiny_converted(arch: str = "llama", seed: int = 0, order=ORDER, **config):
    """A tiny random model (hidden 64, 4 layers, 4 query / 2 KV heads, byte vocab 259) with every layer
    of `order` converted, DSLA gates and mix randomized so DSLA layers matter, at depth 0."""
    model = build_tiny_model(arch, seed=seed, **config)
    with torch.random.fork_rng(devices=[]):  # the gates' random init, the same for the same seed
        torch.manual_seed(seed)
        convert(model, order)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for twin in dsla_layers(model).values():
            for p in twin.own_parameters().values():
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return set_depth(model, 0)


def tokenizer():
    return build_byte_tokenizer()


@torch.no_grad()
def hf_greedy(model, depth: int, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Hugging Face `generate` (greedy, EOS neither stops nor is suppressed: the engine's `ignore_eos`)
    of the same model at `depth`."""
    set_depth(model, depth)
    ids = torch.tensor([prompt_ids])
    eos, model.generation_config.eos_token_id = model.generation_config.eos_token_id, None  # generate falls back to it
    try:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=0)
    finally:
        model.generation_config.eos_token_id = eos
    return out[0, len(prompt_ids):].tolist()


@torch.no_grad()
def hf_log_softmax(model, depth: int, ids: list[int]) -> torch.Tensor:
    """log_softmax of the Hugging Face logits of one full forward pass: [T, V]."""
    set_depth(model, depth)
    return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def random_prompts(n: int, seed: int, low: int = 3, high: int = 40, vocab: int = 256) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high, (n,), generator=g).tolist()
    return [torch.randint(0, vocab, (L,), generator=g).tolist() for L in lengths]
