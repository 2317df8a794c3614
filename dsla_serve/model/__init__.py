"""DSLA layers for Hugging Face Llama/Mistral/Qwen2 models: conversion, depth, hybrid cache, artifacts.

    model = convert(model, [5, 2, 7])        # the conversion order; depth = 3 (all converted run as DSLA)
    convert(other, [0, 1], kind="gla")       # or a baseline layer kind: "gla", "linear", "swa"
    set_depth(model, 1)                      # layer 5 runs as DSLA, 2 and 7 as softmax attention again
    model.generate(ids, attention_mask=mask) # KV cache for attention layers, dual state for DSLA layers

Imports neither ray, deepspeed nor pydantic (the GPU machine lacks them). The names below load their
modules on first use, so torch-free modules of this package (`sources`) import without torch.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "artifact": ("Artifact", "ArtifactError", "LayerEntry"),
    "attention": ("DSLAAttention", "GateProjection"),
    "baselines": ("LAYER_KINDS", "layer_class", "layer_kind"),
    "cache": ("DSLAStateLayer",),
    "config": ("DSLAConfig",),
    "fingerprint": ("model_fingerprint",),
    "loading": ("load_model_and_tokenizer", "load_tokenizer", "resolve_model"),
    "memory": ("cache_bytes_per_token", "dsla_state_bytes"),
    "sources": ("REFERENCE_MODELS", "ModelSourceError"),
    "surgery": ("SUPPORTED_MODEL_TYPES", "conversion_order", "convert", "decoder_layers", "dsla_layers", "get_depth",
                "set_depth"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
