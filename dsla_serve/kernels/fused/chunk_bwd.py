"""Backward of the chunked DSLA in the forward's decomposition: state passes, then three per-chunk kernels.

Given the boundary states h (recomputed by `states.forward_states`), their gradients dh
(`states.backward_states`) and the forward's score block A:

1. `chunk_bwd_dv`: dA = do v^T (causal) and dv = A^T do + sum_i decayed k dS_i (64-row products);
2. `chunk_bwd_intra`: the intra-chunk parts of dq and dk from dA, one 16-row sub-chunk per program
   (the backward of `chunk_scores`, same bounded decay factors);
3. `chunk_bwd_dqkg`: the state parts of dq and dk (64-row products over V tiles), then dq, dk and
   dg_i = reverse in-chunk sum of (m_i q dqr_i - k dk_i) + the chunk-end carry, and dmix.

dk and dv come out per query head; the caller sums GQA groups.
"""

from __future__ import annotations

import torch

from .chunk_bwd_dqkg import chunk_dqkg
from .chunk_bwd_dv import chunk_dv
from .chunk_bwd_intra import chunk_dqk_intra
from .common import Gates
from .layout import ChunkLayout


def chunk_backward(q, k, v, b1, b2, g1, g2, gates: Gates, do, mix, A, h1, h2, dh1, dh2, scale: float,
                   layout: ChunkLayout):
    """Gradients of the chunked DSLA.

    Args:
        q, g1, g2: [B*T, H, K]; k: [B*T, HK, K]; v: [B*T, HK, V] (any token strides; g as `gates`
            says); b1, b2: [B*T, H, K] fp32 cumulative log2-decays (`chunk_decays`); do: [B*T, H, V] contiguous; mix: [H, 2] fp32; A: [B*T, H, chunk] the forward's
            scores; h1, h2, dh1, dh2: [NB, H, K, V] boundary states and their gradients.
    Returns:
        dq [B*T, H, K] in q's dtype; dk_h [B*T, H, K], dv_h [B*T, H, V] per query head (q's dtype
        without GQA, fp32 with); dg1, dg2 [B*T, H, K] in g's dtype; dmix [H, 2] fp32.
    """
    H, HK = q.shape[1], k.shape[1]
    grad_dtype = q.dtype if HK == H else torch.float32
    dA, dv = chunk_dv(k, v, b1, b2, do, A, dh1, dh2, layout, grad_dtype)
    dq_part, dk_part, z1, z2, dmix_intra = chunk_dqk_intra(q, k, b1, b2, mix, dA, scale, layout)
    dq, dk, dg1, dg2, dmix = chunk_dqkg(q, k, v, b1, b2, g1, g2, gates, do, mix, h1, h2, dh1, dh2, dq_part,
                                        dk_part, z1, z2, scale, layout, grad_dtype)
    return dq, dk, dv, dg1, dg2, dmix + dmix_intra
