"""DSLA layers for Hugging Face Llama/Mistral/Qwen2 models: conversion, depth, hybrid cache, artifacts.

    model = convert(model, [5, 2, 7])        # the conversion order; depth = 3 (all converted run as DSLA)
    convert(other, [0, 1], kind="gla")       # or a baseline layer kind: "gla", "linear", "swa"
    set_depth(model, 1)                      # layer 5 runs as DSLA, 2 and 7 as softmax attention again
    model.generate(ids, attention_mask=mask) # KV cache for attention layers, dual state for DSLA layers

Imports neither ray, deepspeed nor pydantic (the GPU machine lacks them).
"""

from .artifact import Artifact, ArtifactError, LayerEntry
from .attention import DSLAAttention, GateProjection
from .baselines import LAYER_KINDS, layer_class, layer_kind
from .cache import DSLAStateLayer
from .config import DSLAConfig
from .fingerprint import model_fingerprint
from .memory import cache_bytes_per_token, dsla_state_bytes
from .surgery import (SUPPORTED_MODEL_TYPES, conversion_order, convert, decoder_layers, dsla_layers, get_depth,
                      set_depth)

__all__ = [
    "Artifact", "ArtifactError", "LayerEntry", "DSLAAttention", "GateProjection", "LAYER_KINDS", "layer_class",
    "layer_kind", "DSLAStateLayer", "DSLAConfig",
    "model_fingerprint", "cache_bytes_per_token", "dsla_state_bytes", "SUPPORTED_MODEL_TYPES", "conversion_order",
    "convert", "decoder_layers", "dsla_layers", "get_depth", "set_depth",
]
