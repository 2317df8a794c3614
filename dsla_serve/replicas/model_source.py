"""Where the engine's model comes from: a path / hub id / `tiny:<arch>` or an in-memory HF model, plus
an optional artifact; and the facts about it the engine needs (layer shapes, EOS ids, context limit)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..model import Artifact, conversion_order, decoder_layers, dsla_layers
from ..model.loading import load_model_and_tokenizer, resolve_dtype
from .cache import CacheSpec, LayerShape


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(model, tokenizer, dtype, device):
    """-> (model in eval mode, tokenizer or None).

    `model` is a local directory, a hub id or `tiny:<arch>` (loaded on `device` in `dtype`), or an
    in-memory Hugging Face causal LM (moved to `device` / cast to `dtype` only when they are given).
    """
    if isinstance(model, (str, Path)):
        loaded, loaded_tokenizer = load_model_and_tokenizer(
            str(model), dtype=dtype if dtype is not None else "auto",
            device=device if device is not None else default_device())
        return loaded.eval(), tokenizer if tokenizer is not None else loaded_tokenizer
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a path, a hub id, 'tiny:<arch>' or a Hugging Face model, "
                        f"got {type(model).__name__}")
    decoder_layers(model)  # raises TypeError naming an unsupported architecture
    if dtype is not None and resolve_dtype(dtype) != "auto":
        model = model.to(resolve_dtype(dtype))
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


def open_artifact(artifact) -> Artifact | None:
    if artifact is None or isinstance(artifact, Artifact):
        return artifact
    return Artifact.open(artifact)


def max_converted_depth(model: nn.Module) -> int:
    """The deepest depth the model can run: how many layers it has converted (its whole order)."""
    return len(conversion_order(model))


def active_dsla_layers(model: nn.Module, depth: int) -> dict[int, nn.Module]:
    """{layer index: DSLAAttention} of the first `depth` layers of the conversion order."""
    twins = dsla_layers(model)
    return {i: twins[i] for i in conversion_order(model)[:depth]}


def layer_shape(attn: nn.Module) -> LayerShape:
    d = attn.head_dim
    return LayerShape(heads=attn.q_proj.out_features // d, kv_heads=attn.k_proj.out_features // d, head_dim=d)


def cache_spec(model: nn.Module, depth: int, max_model_len: int) -> CacheSpec:
    """What the cache holds at `depth`: KV for the softmax layers, states for the DSLA layers."""
    dsla = active_dsla_layers(model, depth)
    shapes = {i: layer_shape(layer.self_attn) for i, layer in enumerate(decoder_layers(model))}
    return CacheSpec(kv_layers={i: s for i, s in shapes.items() if i not in dsla},
                     dsla_layers={i: s for i, s in shapes.items() if i in dsla},
                     kv_dtype=next(model.parameters()).dtype, max_model_len=max_model_len)


def eos_token_ids(model: nn.Module, tokenizer) -> set[int]:
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for source in (getattr(gen, "eos_token_id", None), getattr(model.config, "eos_token_id", None),
                   getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(x) for x in source)
    return ids


def context_limit(model: nn.Module, max_model_len: int | None) -> int:
    """`max_model_len`, checked against the model's position limit and sliding window (unsupported)."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None)
    if max_model_len is None:
        if limit is None:
            raise ValueError("max_model_len is required: the model config has no max_position_embeddings")
        max_model_len = int(limit)
    if isinstance(max_model_len, bool) or not isinstance(max_model_len, int) or max_model_len < 2:
        raise ValueError(f"max_model_len must be an int >= 2, got {max_model_len!r}")
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) and max_model_len > window:
        raise ValueError(f"max_model_len={max_model_len} exceeds the model's sliding window ({window}); the engine "
                         f"implements full attention only, so set max_model_len <= {window}")
    return max_model_len
