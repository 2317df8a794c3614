"""Softmax attention of one new token per sequence over a per-slot KV cache (the engine's decode step).

`decode.py`: the op and its PyTorch form; `decode_triton.py`: the split-K Triton kernel it dispatches
to on CUDA.
"""

from .decode import decode_attention, decode_attention_torch

__all__ = ["decode_attention", "decode_attention_torch"]
