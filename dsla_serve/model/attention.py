"""`DSLAAttention`: the DSLA twin of a Hugging Face Llama/Mistral/Qwen2 attention module."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..kernels import chunk_dsla, recurrent_dsla
from ..kernels.gates import log_decay, log_sigmoid  # noqa: F401 - log_sigmoid: re-exported
from .cache import dsla_token_mask, get_dsla_state, set_dsla_state
from .config import DSLAConfig

SUPPORTED_ATTENTION = ("LlamaAttention", "MistralAttention", "Qwen2Attention")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")

# With a carried state, chunks this short go through the step form (decode: T = 1).
RECURRENT_MAX_TOKENS = 16


class GateProjection(nn.Module):
    """hidden -> H*K gate logits, full rank (one Linear) or low rank (hidden -> r -> H*K).

    The output-side weight starts at zero (`init_std` 0), so every token starts with the decay set by
    the bias; the gradient still reaches it (d logits / d W = x). `init_std` > 0 draws it from
    N(0, init_std^2) instead.
    """

    def __init__(self, hidden_size: int, out_features: int, rank: int | None, bias_value: float,
                 dtype: torch.dtype, device: torch.device | str | None, init_std: float = 0.0):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.down = None if rank is None else nn.Linear(hidden_size, rank, bias=False, **kw)
        self.up = nn.Linear(hidden_size if rank is None else rank, out_features, bias=True, **kw)
        with torch.no_grad():
            if self.down is not None:
                nn.init.normal_(self.down.weight, std=hidden_size**-0.5)
            if init_std > 0:
                nn.init.normal_(self.up.weight, std=init_std)
            else:
                self.up.weight.zero_()
            self.up.bias.fill_(bias_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., hidden] -> [..., out_features]."""
        return self.up(x) if self.down is None else self.expand(self.down(x))

    def expand(self, code: torch.Tensor) -> torch.Tensor:
        """Low rank: code [..., r] (the `down` output, possibly a column view of a wider GEMM's output)
        -> logits [..., out_features], bias included, in one addmm. `self.up(code)` on a column view
        does the product and then the bias add as a second pass over the logits (F.linear fuses
        the bias only for contiguous inputs): 29 ms of a 4 x 8k depth-32 prefill on an H100."""
        flat = code.reshape(-1, code.shape[-1])  # a view when rows have one stride (column views do)
        return torch.addmm(self.up.bias, flat, self.up.weight.t()).view(*code.shape[:-1], -1)


class DSLAAttention(nn.Module):
    """Dual-state linear attention with q/k/v/o taken from a pretrained attention module.

    The q/k/v/o projections are *shared* with the original module (the same nn.Linear objects) until
    `untie_projections()` gives this layer its own copies (needed only when they are trained), so a
    converted model keeps both attentions resident at almost no cost. No rotary embedding is applied:
    positions enter through the decays.

    Attributes set by model surgery (`dsla_serve.model.surgery`): `active` (this layer runs as DSLA
    at the model's current depth) and `order_position` (its index in the conversion order).
    """

    def __init__(self, attn: nn.Module, config: DSLAConfig | None = None):
        super().__init__()
        name = type(attn).__name__
        if name not in SUPPORTED_ATTENTION:
            raise TypeError(f"cannot convert {name}: DSLA conversion supports {', '.join(SUPPORTED_ATTENTION)}")
        config = config or DSLAConfig()
        self.config = config
        self.layer_idx = attn.layer_idx
        self.head_dim = attn.head_dim
        self.num_heads = attn.q_proj.out_features // self.head_dim
        self.num_kv_heads = attn.k_proj.out_features // self.head_dim
        self.hidden_size = attn.q_proj.in_features
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.projections_tied = True
        self.active = False
        self.order_position: int | None = None
        w = attn.q_proj.weight
        gate_out = self.num_heads * self.head_dim
        self.gate_history = GateProjection(self.hidden_size, gate_out, config.gate_rank,
                                           config.history_gate_bias, w.dtype, w.device, config.gate_init_std)
        self.gate_recency = GateProjection(self.hidden_size, gate_out, config.gate_rank,
                                           config.recency_gate_bias, w.dtype, w.device, config.gate_init_std)
        self.mix_logits = nn.Parameter(
            torch.tensor(config.mix_init, dtype=torch.float32, device=w.device).repeat(self.num_heads, 1))
        # A gain per head on the read-out before W_o (the spec's y = W_o o, reparametrised: a column
        # scaling of W_o). Without a normaliser the states sum hundreds of k^T v where softmax averages,
        # so a converted layer starts hundreds of times too loud; the trainer sets this gain from one
        # batch before fitting (`dsla_serve.trainer.calibration`) so that W_o itself can stay shared.
        self.output_scale = nn.Parameter(torch.ones(self.num_heads, dtype=torch.float32, device=w.device))

    def extra_repr(self) -> str:
        return (f"layer={self.layer_idx}, heads={self.num_heads}, kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, gate_rank={self.config.gate_rank}, tied={self.projections_tied}, "
                f"active={self.active}")

    def untie_projections(self) -> None:
        """Give this layer private copies of q/k/v/o (so training them leaves the original intact)."""
        if self.projections_tied:
            for n in PROJECTIONS:
                setattr(self, n, copy.deepcopy(getattr(self, n)))
            self.projections_tied = False

    def own_parameters(self) -> dict[str, torch.Tensor]:
        """The parameters this layer adds to the model: gates and mix logits, plus q/k/v/o when untied.

        Names are those of `self.state_dict()`; these are what an artifact stores for the layer.
        """
        shared = () if not self.projections_tied else tuple(f"{p}." for p in PROJECTIONS)
        return {n: p for n, p in self.named_parameters() if not n.startswith(shared)}

    def mix(self) -> torch.Tensor:
        """[H, 2] non-negative read-out weights (softmax of the learned logits)."""
        return torch.softmax(self.mix_logits.float(), dim=-1)

    def readout_mix(self) -> torch.Tensor:
        """[H, 2] fp32: the weights the DSLA ops read the two states with, `mix()` times each head's
        `output_scale`. The ops are linear in their mix, so the gain costs nothing there, where scaling
        their output would be one more pass over [tokens, H, V]."""
        m = self.mix()
        return m.expand(self.num_heads, 2) * self.output_scale.float()[:, None]

    def project_out(self, o: torch.Tensor, dtype: torch.dtype, project=None) -> torch.Tensor:
        """o [..., H, V] of an op given `readout_mix()` -> [..., hidden]: W_o o in `dtype`, as o_proj(x) or,
        when given, project(x, o_proj) (a runner that runs one-row projections as its gemv)."""
        x = o.flatten(-2).to(dtype)
        return self.o_proj(x) if project is None else project(x, self.o_proj)

    def read_out(self, o: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """o [..., H, V] per-head outputs computed without the gain -> [..., hidden]: W_o (output_scale * o)."""
        return self.project_out(o * self.output_scale.to(o.dtype)[:, None], dtype)

    @property
    def gate_logit_normalizer(self) -> float:
        """tau: the log-decays are logsigmoid(gate logits) / tau (what the kernels take)."""
        return self.config.tau

    def gates(self) -> list[GateProjection]:
        """The gate projections this layer has, history first (a single-gate subclass has one)."""
        return [g for g in (getattr(self, "gate_history", None), getattr(self, "gate_recency", None))
                if g is not None]

    def projection_linears(self) -> list[nn.Linear]:
        """The Linears applied to the layer input, in the column order `split_projection` reads: q, k, v,
        then each gate's first Linear (full rank: `up`; low rank: `down`). One GEMM over their stacked
        weights (`dsla_serve.replicas.merged_weights`) replaces them all."""
        return [self.q_proj, self.k_proj, self.v_proj] + [g.up if g.down is None else g.down for g in self.gates()]

    def split_projection(self, y: torch.Tensor):
        """y [B, T, sum of `projection_linears()` out_features] -> q [B,T,H,K], k, v [B,T,Hk,K] and the
        gate logits l1, l2 [B,T,H,K], as column views of y where possible (low rank: the gates' `up`
        applied to their columns; one gate: l2 is l1)."""
        widths = [lin.out_features for lin in self.projection_linears()]
        return self._heads(*y.split(widths, dim=-1))

    def _heads(self, q, k, v, *codes):
        B, T = q.shape[:2]
        D = self.head_dim
        logits = [c if g.down is None else g.expand(c) for g, c in zip(self.gates(), codes)]
        l1 = logits[0].view(B, T, self.num_heads, D)
        l2 = logits[1].view(B, T, self.num_heads, D) if len(logits) > 1 else l1
        return (q.view(B, T, self.num_heads, D), k.view(B, T, self.num_kv_heads, D),
                v.view(B, T, self.num_kv_heads, D), l1, l2)

    def project(self, x: torch.Tensor, gate_logits: bool = False):
        """x: [B, T, hidden] -> q [B,T,H,K], k [B,T,Hk,K], v [B,T,Hk,V], g1, g2 [B,T,H,K]: fp32
        log-decays logsigmoid(W_g x + b) / tau, or with `gate_logits` the logits W_g x + b in x's dtype
        (pass them with gate_logit_normalizer=self.gate_logit_normalizer: the kernels take the log-sigmoid
        at their loads, in fp32)."""
        q, k, v, l1, l2 = self._heads(*(lin(x) for lin in self.projection_linears()))
        if gate_logits:
            return q, k, v, l1, l2
        tau = self.gate_logit_normalizer
        g1 = log_decay(l1, tau)
        return q, k, v, g1, (g1 if l2 is l1 else log_decay(l2, tau))

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None, cache=None,
                past_key_values=None, **kwargs):
        """The Hugging Face attention call. hidden_states [B, T, hidden] -> ([B, T, hidden], None).

        `cache` (transformers >= 5.2x) or `past_key_values` (5.17) is a Hugging Face dynamic cache or
        an object with `get_dsla_state`/`set_dsla_state` (see `dsla_serve.model.cache`); None runs the
        sequence from a zero state and keeps nothing. Padded tokens (from the attention mask) leave
        the states exactly unchanged: their key is zeroed (nothing added) and their log-decay too
        (nothing forgotten), so padding anywhere, prompt or decode step, never enters a state.
        """
        cache = cache if cache is not None else past_key_values
        B, T, _ = hidden_states.shape
        q, k, v, l1, l2 = self.project(hidden_states, gate_logits=True)
        keep = dsla_token_mask(attention_mask, B, T)
        if keep is not None:  # a padded token: key 0, gate logit +inf (log-decay 0)
            keep = keep[:, :, None, None]
            k = k * keep.to(k.dtype)
            l1, l2 = (x.masked_fill(~keep, float("inf")) for x in (l1, l2))
        state = get_dsla_state(cache, self.layer_idx) if cache is not None else None
        op = recurrent_dsla if state is not None and T <= RECURRENT_MAX_TOKENS else chunk_dsla
        o, new_state = op(q, k, v, l1, l2, self.readout_mix(), initial_state=state,
                          output_final_state=cache is not None, gate_logit_normalizer=self.gate_logit_normalizer)
        if cache is not None:
            set_dsla_state(cache, self.layer_idx, new_state, T)
        return self.project_out(o, hidden_states.dtype), None
