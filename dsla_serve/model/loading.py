"""Load a causal LM and its tokenizer from a local path, a hub id, or `tiny:<arch>` (built in memory)."""

from __future__ import annotations

import torch

TINY_PREFIX = "tiny:"

_DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load_model_and_tokenizer(spec: str, *, dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu",
                             seed: int = 0):
    """-> (model in eval mode, tokenizer).

    `spec` is a local model directory or hub id (loaded with `from_pretrained`), or `tiny:<arch>`
    (`tiny:llama`, `tiny:mistral`, `tiny:qwen2`) for a small random model with a byte-level tokenizer,
    seeded by `seed`, that needs no download.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.startswith(TINY_PREFIX):
        from .tiny import build_tiny_model
        from .tiny_tokenizer import build_byte_tokenizer

        torch_dtype = resolve_dtype(dtype)
        model = build_tiny_model(spec[len(TINY_PREFIX):], seed=seed,
                                 dtype=torch.float32 if torch_dtype == "auto" else torch_dtype)
        return model.to(device), build_byte_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(spec, dtype=resolve_dtype(dtype), attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(spec)
    return model.to(device).eval(), tokenizer
