"""DSLA attention ops (functional, flash-linear-attention style).

Tensors are [B, T, H, D]; states are pairs (s1, s2) of [N, H, K, V] fp32 tensors.
`chunk_dsla` (prefill / training) and `recurrent_dsla` (decode) dispatch by device and dtype to a
Triton kernel on CUDA when one is available and to the PyTorch implementation otherwise; both compute
the same function as `naive_dsla`, the reference.
"""

from .dispatch import chunk_dsla, recurrent_dsla
from .inputs import PackedSequences
from .naive import naive_dsla

__all__ = ["chunk_dsla", "recurrent_dsla", "naive_dsla", "PackedSequences"]
