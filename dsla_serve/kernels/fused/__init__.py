"""Fused dual-state DSLA kernels in Triton.

Files: `layout` (sequence/chunk/boundary bookkeeping), `common` (shared jit helpers), `states`
(chunk-level state passes, forward and backward), `chunk_scores` (intra-chunk score blocks),
`chunk_fwd` (outputs), `chunk_bwd` (gradients), `chunk` (the autograd op), `recurrent` + `decode`
(token-by-token and state-pool decode).
"""

from .chunk import chunk_dsla_triton
from .decode import recurrent_dsla_pool_triton, recurrent_dsla_triton

__all__ = ["chunk_dsla_triton", "recurrent_dsla_triton", "recurrent_dsla_pool_triton"]
