"""`ModelRunner`: the engine's own forward pass over a Hugging Face Llama/Mistral/Qwen2 model.

It walks the HF modules itself (embed_tokens, each layer's input_layernorm / attention projections /
post_attention_layernorm / mlp, norm, lm_head, rotary_emb) over a flat batch of prefill and decode
tokens (`ForwardBatch`), so one pass serves chunked prefill and batched decode together and reads
the weights once. Per layer kind at the current depth:

On CUDA with Triton, residual adds are fused into the RMSNorms, the MLP activation is fused, the
rotary embedding is fused with the cache write (`dsla_serve.kernels.block`), and q/k/v (softmax
layers), q/k/v plus both gate projections (DSLA layers) and gate/up run as one GEMM each over merged
weights (`merged_weights.py`); a pass of one row (batch-1 decode) runs every projection as the Triton
`gemv` (faster than cuBLAS at one row; the down projection takes the MLP activation at its load);
elsewhere the HF modules run as they are.

- softmax attention: rotary embedding, keys/values written into the slot cache, prefill chunks
  through SDPA over their slot's prefix (lower-right causal mask), decode rows through
  `decode_attention` (split-K Triton kernel on CUDA);
- DSLA: `chunk_dsla` for the prefill segments (initial states gathered from the pool, final states
  written back) and `recurrent_dsla_pool` for the decode rows (pool updated in place), both given the
  gate logits (the kernels take logsigmoid(.) / tau at their loads) and q/k/v/gates as column views of
  the projection output (read in place).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from ..kernels import chunk_dsla
from ..kernels.attention import decode_attention
from ..kernels.dispatch import recurrent_dsla_pool
from .batch import ForwardBatch
from .cache import CachePool
from .merged_weights import merge_linears


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [N, heads, D] with cos/sin [N, D] (the rotate-half convention of HF Llama)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def dsla_inputs(twin, x: torch.Tensor, merged: tuple | None = None, linear=F.linear):
    """What the runner passes to the DSLA kernels for x [N, hidden]: (q, k, v, l1, l2), each
    [1, N, heads, D], l1/l2 the gate logits (pass gate_logit_normalizer=twin.gate_logit_normalizer).

    With `merged` (= merge_linears(twin.projection_linears())) one GEMM (`linear(x, weight, bias)`)
    computes them all and they are column views of its output; without, the twin's own projections
    (contiguous).
    """
    if merged is not None:
        return twin.split_projection(linear(x, *merged)[None])
    return twin.project(x[None], gate_logits=True)


def _fused_kernels_usable(model, device: torch.device) -> bool:
    """Triton fused kernels on CUDA, for the standard Llama-family blocks (RMSNorm, gated SiLU MLP)."""
    if device.type != "cuda" or os.environ.get("DSLA_BACKEND", "auto") == "torch":
        return False
    try:
        from ..kernels import block  # noqa: F401
    except ImportError:
        return False
    config = model.config
    norms = [model.model.norm] + [n for layer in model.model.layers
                                  for n in (layer.input_layernorm, layer.post_attention_layernorm)]
    mlps = [layer.mlp for layer in model.model.layers]
    return (getattr(config, "hidden_act", None) in ("silu", "swish")
            and all(type(n).__name__.endswith("RMSNorm") and hasattr(n, "variance_epsilon") for n in norms)
            and all(all(hasattr(m, f) for f in ("gate_proj", "up_proj", "down_proj")) for m in mlps))


class ModelRunner:
    """Runs forward passes of `model` at a fixed set of DSLA layers against one `CachePool`."""

    def __init__(self, model, pool: CachePool, dsla_layers: dict[int, torch.nn.Module], fused: bool | None = None):
        """`dsla_layers`: {layer index: DSLAAttention} for the layers that are DSLA at this depth;
        `fused`: use the Triton fused kernels and merged projections (default: on CUDA when usable).
        The attribute `use_gemv` (default: `fused`) runs one-row passes' projections through the Triton
        `gemv`; a benchmark may turn it off before the first step (CUDA graphs capture what it says)."""
        base = model.model
        self.embed = base.embed_tokens
        self.layers = base.layers
        self.norm = base.norm
        self.rotary = base.rotary_emb
        self.lm_head = model.lm_head
        self.pool = pool
        self.dsla = dict(dsla_layers)
        self.fused = _fused_kernels_usable(model, pool.device) if fused is None else fused
        self.use_gemv = self.fused
        self.qkv: dict[int, tuple] = {}  # layer -> merged (weight, bias) of q/k/v, softmax layers
        self.dsla_proj: dict[int, tuple] = {}  # layer -> merged (weight, bias) of twin.projection_linears()
        self.gate_up: dict[int, tuple] = {}  # layer -> merged (weight, bias) of the MLP's gate/up
        # layer -> [H, 2] fp32 readout mix: a function of parameters that are fixed while this runner
        # lives (the engine builds a new one when layers load), so a step does not recompute it (two
        # kernels per DSLA layer, graph nodes of every decode step)
        with torch.no_grad():
            self.readout_mix = {i: twin.readout_mix().detach().contiguous() for i, twin in self.dsla.items()}
        if self.fused:
            for i, layer in enumerate(self.layers):
                if i in self.dsla:
                    merged = merge_linears(self.dsla[i].projection_linears())
                    if merged is not None:
                        self.dsla_proj[i] = merged
                else:
                    attn = layer.self_attn
                    merged = merge_linears([attn.q_proj, attn.k_proj, attn.v_proj])
                    if merged is not None:
                        self.qkv[i] = merged
                merged = merge_linears([layer.mlp.gate_proj, layer.mlp.up_proj])
                if merged is not None:
                    self.gate_up[i] = merged

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """-> logits [M, V] of `batch.logit_rows` (all N rows when None), in the model dtype."""
        if self.fused:
            return self._forward_fused(batch)
        h = self.embed(batch.input_ids)  # [N, hidden]
        cos, sin = self._rotary(h, batch)
        for i, layer in enumerate(self.layers):
            h = h + self._mixer(i, layer, layer.input_layernorm(h), cos, sin, batch)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        h = h if batch.logit_rows is None else h.index_select(0, batch.logit_rows)
        return self.lm_head(self.norm(h))

    def _forward_fused(self, batch: ForwardBatch) -> torch.Tensor:
        """The same function with residual adds fused into the RMSNorms and the MLP activation fused."""
        from ..kernels.block import add_rmsnorm, gemv, silu_mul

        h = self.embed(batch.input_ids)
        cos, sin = self._rotary(h, batch)
        first = self.layers[0].input_layernorm
        h, x = add_rmsnorm(h, None, first.weight, first.variance_epsilon)
        for i, layer in enumerate(self.layers):
            post = layer.post_attention_layernorm
            h, x = add_rmsnorm(h, self._mixer(i, layer, x, cos, sin, batch), post.weight, post.variance_epsilon)
            mlp = layer.mlp
            if i in self.gate_up:
                gu = self._linear(x, *self.gate_up[i])
                f = mlp.gate_proj.out_features
                down = mlp.down_proj
                if self._one_row(gu, down.weight):
                    m = gemv(gu, down.weight, down.bias, silu_mul_input=True)
                else:
                    m = down(silu_mul(gu[:, :f], gu[:, f:]))
            else:
                m = mlp.down_proj(silu_mul(mlp.gate_proj(x), mlp.up_proj(x)))
            nxt = self.layers[i + 1].input_layernorm if i + 1 < len(self.layers) else self.norm
            h, x = add_rmsnorm(h, m, nxt.weight, nxt.variance_epsilon)
        x = x if batch.logit_rows is None else x.index_select(0, batch.logit_rows)
        return self._project(x, self.lm_head)

    def _one_row(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        """Whether x @ weight.T runs as the Triton `gemv` (one row, gemv on, rows of weight contiguous)."""
        return self.use_gemv and x.shape[0] == 1 and weight.stride(1) == 1

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, K] -> [N, out] = F.linear(x, weight, bias), as `gemv` for one row."""
        return _gemv(x, weight, bias) if self._one_row(x, weight) else F.linear(x, weight, bias)

    def _project(self, x: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
        """x [N, K] -> linear(x): the module's own call (its hooks run), as `gemv` for one row."""
        return _gemv(x, linear.weight, linear.bias) if self._one_row(x, linear.weight) else linear(x)

    def _rotary(self, h: torch.Tensor, batch: ForwardBatch):
        cos, sin = self.rotary(h[None], batch.positions[None])
        return cos[0], sin[0]  # [N, D]

    def _mixer(self, i: int, layer, x: torch.Tensor, cos, sin, batch: ForwardBatch) -> torch.Tensor:
        """Token mixing of layer i (DSLA or softmax attention). x [N, hidden] -> [N, hidden]."""
        if i in self.dsla:
            return self._dsla(i, self.dsla[i], x, batch)
        return self._attention(i, layer.self_attn, x, cos, sin, batch)

    def _attention(self, i: int, attn, x: torch.Tensor, cos, sin, batch: ForwardBatch) -> torch.Tensor:
        """Softmax attention of layer i. x [N, hidden] -> [N, hidden]."""
        N, D = x.shape[0], attn.head_dim
        if i in self.qkv:  # one GEMM; q/k/v are column views of its output
            qkv = self._linear(x, *self.qkv[i])
            nq, nk = attn.q_proj.out_features, attn.k_proj.out_features
            q, k, v = qkv[:, :nq], qkv[:, nq:nq + nk], qkv[:, nq + nk:]
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        q, k, v = q.view(N, -1, D), k.view(N, -1, D), v.view(N, -1, D)  # [N, H, D], [N, Hk, D] x 2
        kc, vc = self.pool.k[i], self.pool.v[i]
        if self.fused:
            from ..kernels.block import rope_kv_write
            rope_kv_write(q, k, v, cos, sin, kc, vc, batch.kv_slots, batch.kv_pos)
        else:
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            kc[batch.kv_slots, :, batch.kv_pos] = k.to(kc.dtype)
            vc[batch.kv_slots, :, batch.kv_pos] = v.to(vc.dtype)
        gqa = k.shape[1] != q.shape[1]
        parts = []
        for seg in batch.segments:
            qs = q[seg.offset:seg.offset + seg.length].transpose(0, 1)[None]  # [1, H, len, D]
            ks, vs = kc[seg.slot:seg.slot + 1, :, :seg.end], vc[seg.slot:seg.slot + 1, :, :seg.end]
            if seg.start == 0:
                o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=attn.scaling, enable_gqa=gqa)
            else:
                o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=causal_lower_right(seg.length, seg.end),
                                                   scale=attn.scaling, enable_gqa=gqa)
            parts.append(o[0].transpose(0, 1))  # [len, H, D]
        if batch.num_decode:
            P = batch.num_prefill_tokens
            parts.append(decode_attention(q[P:], kc, vc, batch.dec_slots, batch.dec_lengths, attn.scaling,
                                          batch.max_len))
        o = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        return self._project(o.reshape(N, -1).to(x.dtype), attn.o_proj)

    def _dsla(self, i: int, twin, x: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """DSLA layer i. x [N, hidden] -> [N, hidden]."""
        q, k, v, g1, g2 = dsla_inputs(twin, x, self.dsla_proj.get(i), self._linear)  # [1, N, heads, D]
        mix = self.readout_mix[i]
        tau = twin.gate_logit_normalizer
        s1, s2 = self.pool.s1[i], self.pool.s2[i]
        P, N = batch.num_prefill_tokens, x.shape[0]
        parts = []
        if P:
            rows = batch.prefill_state_slots
            o, (f1, f2) = chunk_dsla(q[:, :P], k[:, :P], v[:, :P], g1[:, :P], g2[:, :P], mix,
                                     initial_state=(s1.index_select(0, rows), s2.index_select(0, rows)),
                                     output_final_state=True, cu_seqlens=batch.cu_seqlens,
                                     gate_logit_normalizer=tau)
            s1.index_copy_(0, rows, f1.to(s1.dtype))
            s2.index_copy_(0, rows, f2.to(s2.dtype))
            parts.append(o[0])
        if batch.num_decode:
            o = recurrent_dsla_pool(q[0, P:, None], k[0, P:, None], v[0, P:, None], g1[0, P:, None],
                                    g2[0, P:, None], mix, (s1, s2), batch.dec_state_slots, gate_logit_normalizer=tau)
            parts.append(o[:, 0])
        o = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        return twin.project_out(o, x.dtype, self._project)


def _gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The Triton one-row projection, imported when first used (triton is only needed on CUDA). Looked up
    on the package at each call, so a test may wrap `dsla_serve.kernels.block.gemv`."""
    from ..kernels import block

    return block.gemv(x, weight, bias)
