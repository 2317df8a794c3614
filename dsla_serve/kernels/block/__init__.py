"""Fused Triton kernels of a Llama-family block for the engine's CUDA forward pass.

A decode step is one token per sequence, so outside the GEMMs every op is a tiny kernel and launch
overhead dominates (~50 kernels per layer in the plain form). These cut a softmax layer to ~14:

- `rmsnorm.add_rmsnorm`: residual add + RMSNorm (the Llama/Mistral/Qwen2 norm) in one pass;
- `rope.rope_kv_write`: rotary embedding of q and k, and the key/value write into the slot cache;
- `silu.silu_mul`: the gated MLP's silu(gate) * up;
- `gemv.gemv`: a projection of one row (batch-1 decode), optionally with silu_mul at its load.

Each reproduces the rounding of the PyTorch ops it replaces (every intermediate that PyTorch rounds to
the activation dtype is rounded here too), so outputs match the PyTorch modules bit for bit in 16-bit
dtypes and to float32 rounding in float32; `gemv` sums in another order than cuBLAS (float32
accumulation both), so its outputs match F.linear's to rounding, not bit for bit. Any head dim and width runs (blocks are padded to a power
of two and masked).
"""

from .gemv import gemv
from .rmsnorm import add_rmsnorm
from .rope import rope_kv_write
from .silu import silu_mul

__all__ = ["add_rmsnorm", "gemv", "rope_kv_write", "silu_mul"]
