"""`chunk_dsla_triton`: chunked dual-state DSLA on Triton, differentiable.

Forward = four launches: the in-chunk cumulative log-decays of both states (the only kernel that
reads the gates), the chunk-level state pass (both states at every chunk boundary), the intra-chunk
score kernel (the mixed causal score block of every chunk) and the per-chunk output kernel. Backward
(`chunk_bwd`) recomputes the decays and the boundary states (nothing of size T*K*V is kept between
forward and backward; the [T, H, chunk] score block is), runs the reverse state pass, then the dA/dv,
intra-chunk dq/dk and dq/dk/dg kernels. Inputs are read in place when their token axis has a stride
(column views of one merged projection), and gate logits are turned into log-decays at the load.
"""

from __future__ import annotations

import torch

from ..inputs import PackedSequences
from .checks import check_states, check_tensors, mix_table
from .chunk_bwd import chunk_backward
from .chunk_fwd import chunk_output
from .chunk_scores import chunk_scores
from .common import SUB_CHUNK, Gates, dot_dtype, flat_tokens
from .decays import chunk_decays
from .layout import ChunkLayout
from .states import backward_states, forward_states


def flat_gates(g1: torch.Tensor, g2: torch.Tensor):
    """g1, g2 [B, T, H, K] -> flat views sharing one token stride (copies if they cannot)."""
    f1, f2 = flat_tokens(g1), flat_tokens(g2)
    if f1.stride(0) != f2.stride(0):
        f1, f2 = f1.contiguous(), f2.contiguous()
    return f1, f2


class ChunkDSLAFunction(torch.autograd.Function):
    """Autograd wrapper; inputs are already validated. Returns (o, final1, final2) (finals may be None)."""

    @staticmethod
    def forward(ctx, q, k, v, g1, g2, mix, init1, init2, scale, chunk_size, cu_seqlens, output_final_state,
                gate_logit_normalizer):
        B, T, H, K = q.shape
        layout = ChunkLayout.build(B, T, chunk_size, cu_seqlens)
        gates = Gates.of(g1, gate_logit_normalizer)
        mixf = mix_table(mix, H)
        qf, kf, vf = (flat_tokens(x) for x in (q, k, v))
        g1f, g2f = flat_gates(g1, g2)
        init = (init1.contiguous(), init2.contiguous()) if init1 is not None else None
        dt = dot_dtype(q)
        b1, b2 = chunk_decays(g1f, g2f, gates, layout)
        h1, h2, final = forward_states(kf, vf, b1, b2, layout, init, output_final_state, dt)
        A = chunk_scores(qf, kf, b1, b2, mixf, scale, layout, dt)
        o = chunk_output(qf, vf, b1, b2, mixf, h1, h2, A, scale, layout, q.dtype)
        del b1, b2  # recomputed by the backward: two fp32 copies of the gates are not kept
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(qf, kf, vf, g1f, g2f, mix, A, init[0] if init else None, init[1] if init else None)
        ctx.layout, ctx.scale, ctx.shape, ctx.gates = layout, scale, q.shape, gates
        if final is None:
            return o.view(B, T, H, -1), None, None
        return o.view(B, T, H, -1), final[0], final[1]

    @staticmethod
    def backward(ctx, do, dfinal1, dfinal2):
        qf, kf, vf, g1f, g2f, mix, A, init1, init2 = ctx.saved_tensors
        layout, scale, gates = ctx.layout, ctx.scale, ctx.gates
        B, T, H, K = ctx.shape
        HK, V = kf.shape[1], vf.shape[2]
        mixf = mix_table(mix, H)
        dt = dot_dtype(qf)
        init = (init1, init2) if init1 is not None else None
        b1, b2 = chunk_decays(g1f, g2f, gates, layout)
        h1, h2, _ = forward_states(kf, vf, b1, b2, layout, init, False, dt)
        dfinal = None
        if dfinal1 is not None or dfinal2 is not None:
            zero = lambda: qf.new_zeros(layout.num_seqs, H, K, V, dtype=torch.float32)  # noqa: E731
            dfinal = (dfinal1.contiguous() if dfinal1 is not None else zero(),
                      dfinal2.contiguous() if dfinal2 is not None else zero())
        dof = do.contiguous().view(-1, H, V)
        dh1, dh2, dinit = backward_states(qf, b1, b2, dof, mixf, scale, layout, dfinal,
                                          init is not None and any(ctx.needs_input_grad[6:8]), dt)
        dq, dk, dv, dg1, dg2, dmix = chunk_backward(qf, kf, vf, b1, b2, g1f, g2f, gates, dof, mixf, A, h1, h2,
                                                    dh1, dh2, scale, layout)
        if HK != H:  # GQA: a key/value head gets the sum over the query heads that read it
            dk = dk.view(-1, HK, H // HK, K).sum(2)
            dv = dv.view(-1, HK, H // HK, V).sum(2)
        if mix.dim() == 1:
            dmix = dmix.sum(0)
        shape_k, shape_v = (B, T, HK, K), (B, T, HK, V)
        return (dq.view(B, T, H, K), dk.to(kf.dtype).view(shape_k), dv.to(vf.dtype).view(shape_v),
                dg1.view(B, T, H, K), dg2.view(B, T, H, K), dmix.to(mix.dtype),
                dinit[0] if dinit else None, dinit[1] if dinit else None, None, None, None, None, None)


DEFAULT_CHUNK_SIZE = 64


def chunk_dsla_triton(q, k, v, g1, g2, mix, scale=None, initial_state=None, output_final_state=False,
                      cu_seqlens=None, chunk_size: int | None = None, gate_logit_normalizer: float | None = None):
    """Chunked dual-state gated linear attention on Triton (the function `naive_dsla` computes).

    Args:
        q: [B, T, H, K]; k: [B, T, HK, K]; v: [B, T, HK, V], HK divides H; fp16, bf16 or fp32. Each may
            be a view with a token stride (heads and channels contiguous): it is read in place.
        g1, g2: [B, T, H, K] log-decays (<= 0; exact for per-token values down to about -10), or gate
            logits when `gate_logit_normalizer` is given.
        mix: [2] or [H, 2] read-out weights of the two states.
        scale: query scale, default K ** -0.5.
        initial_state: optional pair (s1, s2), each [N, H, K, V] fp32; None means zeros.
        output_final_state: also return the final pair of states.
        cu_seqlens: optional [N + 1] int offsets of packed sequences (B must be 1), or a
            `PackedSequences` (the offsets already on the host: no read-back from the GPU).
        chunk_size: tokens per chunk (boundary states are kept every chunk_size tokens), a multiple
            of 16; default DEFAULT_CHUNK_SIZE.
        gate_logit_normalizer: None, or tau: g1/g2 are gate logits x and the log-decays are
            logsigmoid(x) / tau, computed in fp32 inside the kernels (their gradients are d/dx).

    Returns:
        o [B, T, H, V] in q's dtype and (s1, s2) [N, H, K, V] fp32 if output_final_state, else None.
        Differentiable in q, k, v, g1, g2, mix and the initial state.
    """
    op = "chunk_dsla_triton"
    B, T, H, HK, K, V = check_tensors(op, q, k, v, g1, g2, mix)
    chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    if chunk_size <= 0 or chunk_size % SUB_CHUNK:
        raise ValueError(f"{op}: chunk_size must be a positive multiple of {SUB_CHUNK}, got {chunk_size}")
    N = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"{op}: with cu_seqlens the batch size must be 1 (packed sequences), got B={B}")
        if isinstance(cu_seqlens, PackedSequences):
            if cu_seqlens.offsets[-1] != T:
                raise ValueError(f"{op}: packed sequences end at token {cu_seqlens.offsets[-1]}, not at T={T}")
            N = cu_seqlens.num_seqs
        else:
            if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
                raise ValueError(f"{op}: cu_seqlens must be a 1-D tensor [N + 1], got {tuple(cu_seqlens.shape)}")
            N = cu_seqlens.numel() - 1
    if initial_state is not None:
        check_states(op, "initial_state", initial_state, N, H, K, V)
    if gate_logit_normalizer is not None and not gate_logit_normalizer > 0:
        raise ValueError(f"{op}: gate_logit_normalizer must be > 0, got {gate_logit_normalizer!r}")
    scale = K**-0.5 if scale is None else float(scale)
    init1, init2 = initial_state if initial_state is not None else (None, None)
    o, f1, f2 = ChunkDSLAFunction.apply(q, k, v, g1, g2, mix, init1, init2, scale, chunk_size, cu_seqlens,
                                        bool(output_final_state), gate_logit_normalizer)
    return o, ((f1, f2) if output_final_state else None)
