"""Triton backend of the DSLA ops, as `dispatch` imports it (the kernels live in `fused/`).

Importing this module requires triton; `dispatch` treats an ImportError as "no Triton backend".
"""

from .fused import chunk_dsla_triton, recurrent_dsla_pool_triton, recurrent_dsla_triton

__all__ = ["chunk_dsla_triton", "recurrent_dsla_triton", "recurrent_dsla_pool_triton"]
