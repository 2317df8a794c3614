"""Tiny randomly initialised Hugging Face causal LMs, for tests, the demo and CPU smoke runs.

No weights can be downloaded in many environments this project runs in; these models are built in
memory from a config, with a seeded initialisation so that runs are repeatable.
"""

from __future__ import annotations

import torch

from .tiny_tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE

ARCHITECTURES = ("llama", "mistral", "qwen2")


def _special_ids(vocab_size: int) -> dict[str, int]:
    """pad/bos/eos ids: the byte tokenizer's when the vocabulary holds them, else 0/1/2."""
    if vocab_size >= VOCAB_SIZE:
        return dict(pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    return dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_config(arch: str = "llama", *, hidden_size: int = 64, num_layers: int = 4, num_heads: int = 4,
                num_kv_heads: int = 2, vocab_size: int = VOCAB_SIZE, intermediate_size: int | None = None,
                max_position_embeddings: int = 4096):
    """A small config of the given architecture (GQA by default: 4 query heads, 2 key/value heads).

    The default vocabulary and special ids match `tiny_tokenizer.build_byte_tokenizer()`; a vocabulary
    too small to hold that tokenizer's pad/bos/eos ids (256-258) uses 0/1/2 for them instead.
    """
    import transformers

    classes = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config}
    if arch not in classes:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    kwargs = dict(hidden_size=hidden_size, intermediate_size=intermediate_size or 2 * hidden_size,
                  num_hidden_layers=num_layers, num_attention_heads=num_heads,
                  num_key_value_heads=num_kv_heads, vocab_size=vocab_size,
                  max_position_embeddings=max_position_embeddings, tie_word_embeddings=False,
                  **_special_ids(vocab_size))
    if arch in ("mistral", "qwen2"):
        kwargs["sliding_window"] = None
    return classes[arch](**kwargs)


def build_tiny_model(arch: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32, **config_kwargs):
    """A randomly initialised causal LM in eval mode, on the CPU, with SDPA attention."""
    import transformers

    config = tiny_config(arch, **config_kwargs)
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()
