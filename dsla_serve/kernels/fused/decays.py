"""In-chunk cumulative log2-decays of both states, computed once per forward (and once per backward).

    b_i[t] = log2(e) * sum_{s <= t, s in t's chunk} g_i[s]        (fp32, every b_i <= 0)

Every other kernel reads b instead of the gates: a decay between two tokens of one chunk is
2^(b_t - b_s), a chunk's total decay is b at its last row, and no kernel recomputes log-sigmoids or
prefix sums per tile. One program per (K tile, chunk, head) loads the gates once (log-decays, or gate
logits turned into log-decays in fp32 by `load_gate`) and scans them in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import LOG2E, Gates, chunk_coords, load_gate, pow2
from .layout import ChunkLayout


@triton.jit
def _chunk_decays_kernel(
    g1, g2, b1, b2, cu_seqlens, chunk_indices, boundary_offsets, T, s_g, gate_scale,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    IS_VARLEN: tl.constexpr, GATE_LOGITS: tl.constexpr,
):
    i_k, i_c, hq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n, c, bos, length, boff = chunk_coords(i_c, cu_seqlens, chunk_indices, boundary_offsets, T, BT, IS_VARLEN)
    rows = tl.arange(0, BT)
    tok = bos + c * BT + rows
    o_k = i_k * BK + tl.arange(0, BK)
    m = ((c * BT + rows) < length)[:, None] & (o_k < K)[None, :]
    gq = tok[:, None] * s_g + hq * K + o_k[None, :]
    out = (tok * H + hq)[:, None] * K + o_k[None, :]
    x1 = tl.cumsum(load_gate(g1 + gq, m, gate_scale, GATE_LOGITS) * LOG2E, axis=0)
    tl.store(b1 + out, x1, mask=m)
    x2 = tl.cumsum(load_gate(g2 + gq, m, gate_scale, GATE_LOGITS) * LOG2E, axis=0)
    tl.store(b2 + out, x2, mask=m)


TUNING = {"bk": 64, "num_warps": 4}


def chunk_decays(g1, g2, gates: Gates, layout: ChunkLayout):
    """Cumulative log2-decays of every chunk.

    Args:
        g1, g2: [B*T, H, K] log-decays or gate logits (as `gates` says), any token stride, g1 and g2 alike.
    Returns:
        b1, b2 [B*T, H, K] fp32 contiguous: the inclusive in-chunk sums of the log-decays, times log2(e).
    """
    TT, H, K = g1.shape
    b1 = g1.new_empty(TT, H, K, dtype=torch.float32)
    b2 = torch.empty_like(b1)
    bk = min(TUNING["bk"], pow2(K))
    cu, ci, boffs, T = layout.kernel_args()
    _chunk_decays_kernel[(triton.cdiv(K, bk), layout.num_chunks, H)](
        g1, g2, b1, b2, cu, ci, boffs, T, g1.stride(0), gates.scale,
        H=H, K=K, BT=layout.chunk_size, BK=bk, IS_VARLEN=layout.is_varlen, GATE_LOGITS=gates.logits,
        num_warps=TUNING["num_warps"],
    )
    return b1, b2
