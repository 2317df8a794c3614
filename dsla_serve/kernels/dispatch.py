"""Backend choice for the DSLA ops: Triton on CUDA where a kernel exists, PyTorch otherwise.

`DSLA_BACKEND=torch` forces the PyTorch forms (useful to compare backends on one machine).
"""

from __future__ import annotations

import os

import torch

from .chunk import chunk_dsla_torch
from .gates import log_decays
from .inputs import cu_seqlens_tensor
from .recurrent import recurrent_dsla_torch, recurrent_dsla_pool_torch


_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _triton_wanted(x: torch.Tensor) -> bool:
    if os.environ.get("DSLA_BACKEND", "auto") == "torch":
        return False
    if x.dtype not in _TRITON_DTYPES:  # e.g. fp64 (exactness tests): the PyTorch forms handle it
        return False
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        from . import triton_ops  # noqa: F401
    except ImportError:
        return False
    return True


def chunk_dsla(q, k, v, g1, g2, mix, scale=None, initial_state=None, output_final_state=False,
               cu_seqlens=None, gate_logit_normalizer=None):
    """Chunked DSLA for prefill and training. Shapes as `naive_dsla`; with `cu_seqlens` ([N+1] int,
    packed sequences, B = 1; or a `PackedSequences`, which saves the Triton path reading the offsets
    back from the GPU) states are [N, H, K, V]. With `gate_logit_normalizer` (tau), g1/g2 are
    gate logits x and the log-decays logsigmoid(x) / tau (computed in fp32; the Triton kernels do it at
    their loads, and read views with a token stride in place)."""
    if _triton_wanted(q):
        from .triton_ops import chunk_dsla_triton
        return chunk_dsla_triton(q, k, v, g1, g2, mix, scale, initial_state, output_final_state, cu_seqlens,
                                 gate_logit_normalizer=gate_logit_normalizer)
    g1, g2 = log_decays(g1, g2, gate_logit_normalizer)
    return chunk_dsla_torch(q, k, v, g1, g2, mix, scale, initial_state, output_final_state,
                            cu_seqlens_tensor(cu_seqlens))


def recurrent_dsla(q, k, v, g1, g2, mix, scale=None, initial_state=None, output_final_state=False,
                   cu_seqlens=None, gate_logit_normalizer=None):
    """Step-form DSLA for decode (fast for T = 1, correct for any T). Arguments as `chunk_dsla`."""
    if _triton_wanted(q):
        from .triton_ops import recurrent_dsla_triton
        return recurrent_dsla_triton(q, k, v, g1, g2, mix, scale, initial_state, output_final_state, cu_seqlens,
                                     gate_logit_normalizer=gate_logit_normalizer)
    g1, g2 = log_decays(g1, g2, gate_logit_normalizer)
    return recurrent_dsla_torch(q, k, v, g1, g2, mix, scale, initial_state, output_final_state,
                                cu_seqlens_tensor(cu_seqlens))


def recurrent_dsla_pool(q, k, v, g1, g2, mix, state_pool, slots, scale=None, gate_logit_normalizer=None):
    """One decode step for a batch whose states live in a pool, updated in place.

    Args:
        q, g1, g2: [B, 1, H, K]; k: [B, 1, Hk, K]; v: [B, 1, Hk, V]; mix: [2] or [H, 2].
        state_pool: pair (s1, s2), each [P, H, K, V] fp32, P >= B.
        slots: [B] int64 pool row of each sequence (distinct).
        gate_logit_normalizer: as `chunk_dsla`.
    Returns:
        o: [B, 1, H, V]; the pool rows `slots` hold the new states.
    """
    if _triton_wanted(q):
        from .triton_ops import recurrent_dsla_pool_triton
        return recurrent_dsla_pool_triton(q, k, v, g1, g2, mix, state_pool, slots, scale,
                                          gate_logit_normalizer=gate_logit_normalizer)
    g1, g2 = log_decays(g1, g2, gate_logit_normalizer)
    return recurrent_dsla_pool_torch(q, k, v, g1, g2, mix, state_pool, slots, scale)
