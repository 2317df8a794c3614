"""Baseline replacements for softmax attention, with the interface of `DSLAAttention` (quality experiment 2).

- `GatedLinearAttention` (kind "gla"): ONE gated state, GLA-style: g = logsigmoid(W_g x + b) / tau,
  S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = (s q_t) S_t. Exactly DSLA with mix (1, 0) and g2 = g1,
  so it runs on the same kernels (`chunk_dsla` / `recurrent_dsla`) and the same cache protocol.
- `LinearAttention` (kind "linear"): plain normalised linear attention, phi = elu + 1, no decay:
  o_t = phi(q_t) sum_{s<=t} phi(k_s)^T v_s / (phi(q_t) . sum_{s<=t} phi(k_s)). Numerator and
  denominator come from one call of the DSLA op with doubled heads (values [v, 1]) and zero decay.
- `SlidingWindowAttention` (kind "swa"): softmax attention over the last `window` positions (the
  token itself included), RoPE as the original layer; its cache entry is the last `window` keys and
  values.

Each subclasses `DSLAAttention` so that model surgery, which recognises converted layers by that type,
handles them unchanged: q/k/v/o are shared with the original module (`untie_projections` copies
them), `own_parameters()` lists what the layer adds, `active` / `order_position` are set by surgery.
The DSLA gates and mix a baseline does not have are removed after the parent's constructor.
Built by `layer_class(kind)(attn, config)`, like `DSLAAttention(attn, config)`, or for whole layers by
`convert(model, layers, config, kind=kind)`; `layer_kind(layer)` names the kind of a built layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import chunk_dsla, recurrent_dsla
from .attention import RECURRENT_MAX_TOKENS, DSLAAttention
from .cache import dsla_token_mask, get_dsla_state, set_dsla_state
from .config import DSLAConfig

DEFAULT_WINDOW = 64
LINEAR_EPS = 1e-6


class _Baseline(DSLAAttention):
    """Common part: the parent's bookkeeping and shared q/k/v/o, minus the DSLA parameters not kept."""

    KIND = "?"
    _REMOVE: tuple[str, ...] = ("gate_history", "gate_recency", "mix_logits")

    def __init__(self, attn: nn.Module, config: DSLAConfig | None = None):
        super().__init__(attn, config)
        for name in self._REMOVE:
            delattr(self, name)

    def extra_repr(self) -> str:
        return f"kind={self.KIND}, layer={self.layer_idx}, heads={self.num_heads}, kv_heads={self.num_kv_heads}, " \
               f"head_dim={self.head_dim}, tied={self.projections_tied}, active={self.active}"

    def mix(self) -> torch.Tensor:
        raise AttributeError(f"{type(self).__name__} has no mix of two states")

    def qkv(self, x: torch.Tensor):
        """x [B, T, hidden] -> q [B, T, H, D], k [B, T, Hk, D], v [B, T, Hk, D]."""
        B, T, _ = x.shape
        D = self.head_dim
        return (self.q_proj(x).view(B, T, self.num_heads, D), self.k_proj(x).view(B, T, self.num_kv_heads, D),
                self.v_proj(x).view(B, T, self.num_kv_heads, D))


class GatedLinearAttention(_Baseline):
    """A single gated linear-attention state (GLA-style), initialised like DSLA's history gate.

    `gate_bias` (default: `config.history_gate_bias`) sets the initial decay exp(logsigmoid(b) / tau).
    The cache entry holds the state twice (the DSLA op's pair with g2 = g1); only the first is read.
    """

    KIND = "gla"
    _REMOVE = ("gate_recency", "mix_logits")

    def __init__(self, attn: nn.Module, config: DSLAConfig | None = None, gate_bias: float | None = None):
        super().__init__(attn, config)
        if gate_bias is not None:
            with torch.no_grad():
                self.gate_history.up.bias.fill_(gate_bias)
        self.register_buffer("single_state_mix", torch.tensor([1.0, 0.0], device=self.q_proj.weight.device),
                             persistent=False)

    def mix(self) -> torch.Tensor:
        """[2] = (1, 0): only the first state is read."""
        return self.single_state_mix.float()


class LinearAttention(_Baseline):
    """Normalised linear attention with the elu + 1 feature map and no decay (Katharopoulos et al.).

    The cache entry is the DSLA op's state pair over 2H heads: heads [0, H) hold sum phi(k)^T v,
    heads [H, 2H) hold sum phi(k)^T 1 (the normaliser, repeated over the value axis).
    """

    KIND = "linear"

    def __init__(self, attn: nn.Module, config: DSLAConfig | None = None, eps: float = LINEAR_EPS):
        super().__init__(attn, config)
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None, cache=None,
                past_key_values=None, **kwargs):
        """hidden_states [B, T, hidden] -> ([B, T, hidden], None); padded tokens add nothing to the state."""
        cache = cache if cache is not None else past_key_values
        B, T, _ = hidden_states.shape
        H = self.num_heads
        q, k, v = self.qkv(hidden_states)
        phi_q, phi_k = F.elu(q.float()) + 1, F.elu(k.float()) + 1
        keep = dsla_token_mask(attention_mask, B, T)
        if keep is not None:
            phi_k = phi_k * keep[:, :, None, None]
        # Heads h and H + h read the same phi(q); kv head j and Hk + j the same phi(k), with values v
        # and 1: with the op's GQA rule (head h reads kv head h // (H / Hk)) head H + h reads Hk + h // G.
        q2, k2 = torch.cat([phi_q, phi_q], dim=2), torch.cat([phi_k, phi_k], dim=2)
        v2 = torch.cat([v.float(), torch.ones_like(v, dtype=torch.float32)], dim=2)
        g = torch.zeros_like(q2)
        mix = q2.new_tensor([1.0, 0.0])
        state = get_dsla_state(cache, self.layer_idx) if cache is not None else None
        op = recurrent_dsla if state is not None and T <= RECURRENT_MAX_TOKENS else chunk_dsla
        o2, new_state = op(q2, k2, v2, g, g, mix, initial_state=state, output_final_state=cache is not None)
        if cache is not None:
            set_dsla_state(cache, self.layer_idx, new_state, T)
        numerator, denominator = o2[:, :, :H].float(), o2[:, :, H:, :1].float()
        o = numerator / (denominator + self.eps)  # the op's query scale cancels in the ratio
        return self.read_out(o, hidden_states.dtype), None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, D]; cos/sin [B, T, D] as Hugging Face Llama/Mistral/Qwen2 pass them."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


class SlidingWindowAttention(_Baseline):
    """Softmax attention in which each token sees itself and the previous `window - 1` positions.

    Uses the original layer's q/k/v/o and rotary embedding; adds no parameters. The cache entry is the
    pair (kv [B, 2, Hk, window, D] = last keys (rotated) and values, valid [B, window] bool), oldest first.
    """

    KIND = "swa"

    def __init__(self, attn: nn.Module, config: DSLAConfig | None = None, window: int = DEFAULT_WINDOW):
        super().__init__(attn, config)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self.scaling = self.head_dim ** -0.5

    def extra_repr(self) -> str:
        return super().extra_repr() + f", window={self.window}"

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None, cache=None,
                past_key_values=None, **kwargs):
        """hidden_states [B, T, hidden] -> ([B, T, hidden], None). Needs `position_embeddings` (cos, sin)."""
        if position_embeddings is None:
            raise ValueError("SlidingWindowAttention needs the rotary position_embeddings (cos, sin) of the model")
        cache = cache if cache is not None else past_key_values
        B, T, _ = hidden_states.shape
        W = self.window
        q, k, v = (x.transpose(1, 2) for x in self.qkv(hidden_states))  # [B, heads, T, D]
        cos, sin = position_embeddings
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keep = dsla_token_mask(attention_mask, B, T)
        keep = torch.ones(B, T, dtype=torch.bool, device=q.device) if keep is None else keep.to(q.device)
        state = get_dsla_state(cache, self.layer_idx) if cache is not None else None
        if state is not None:
            kv, valid = state
            k, v = torch.cat([kv[:, 0].to(k.dtype), k], dim=2), torch.cat([kv[:, 1].to(v.dtype), v], dim=2)
            keep = torch.cat([valid, keep], dim=1)
        offset = k.shape[2] - T  # queries are the last T of the k.shape[2] key positions
        qpos = torch.arange(T, device=q.device)[:, None] + offset
        distance = qpos - torch.arange(k.shape[2], device=q.device)[None, :]
        allowed = (distance >= 0) & (distance < W)  # [T, S]
        mask = (allowed & keep[:, None, :]) | (distance == 0)  # [B, T, S]; a padded query sees itself only
        group = self.num_heads // self.num_kv_heads
        o = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                           attn_mask=mask[:, None], scale=self.scaling)
        if cache is not None:
            set_dsla_state(cache, self.layer_idx, self._window_state(k, v, keep), T)
        return self.read_out(o.transpose(1, 2), hidden_states.dtype), None

    def _window_state(self, k, v, keep):
        """The last `window` positions of k, v [B, Hk, S, D] and keep [B, S], left-padded as invalid."""
        W, S = self.window, k.shape[2]
        if S < W:
            pad = W - S
            k, v = F.pad(k, (0, 0, pad, 0)), F.pad(v, (0, 0, pad, 0))
            keep = F.pad(keep, (pad, 0), value=False)
        return torch.stack([k[:, :, -W:], v[:, :, -W:]], dim=1), keep[:, -W:]


BASELINES: dict[str, type[DSLAAttention]] = {
    cls.KIND: cls for cls in (GatedLinearAttention, LinearAttention, SlidingWindowAttention)}
LAYER_KINDS = ("dsla",) + tuple(BASELINES)
# Constructor settings that change a layer's output but are not parameters: an artifact records only the
# kind, so it rebuilds layers with these defaults. (GLA's `gate_bias` only initialises a parameter.)
_UNRECORDED_DEFAULTS = {"linear": {"eps": LINEAR_EPS}, "swa": {"window": DEFAULT_WINDOW}}


def layer_class(kind: str) -> type[DSLAAttention]:
    """The layer class of a kind: "dsla" (DSLAAttention), "gla", "linear" or "swa"."""
    if kind == "dsla":
        return DSLAAttention
    if kind not in BASELINES:
        raise ValueError(f"unknown layer kind {kind!r}; choose one of {', '.join(LAYER_KINDS)}")
    return BASELINES[kind]


def layer_kind(layer: DSLAAttention) -> str:
    """The kind of a converted layer ("dsla", "gla", "linear" or "swa"); exact class, not a subclass."""
    for kind in LAYER_KINDS:
        if type(layer) is layer_class(kind):
            return kind
    raise TypeError(f"{type(layer).__name__} is not a layer kind of {', '.join(LAYER_KINDS)}")


def non_default_settings(layer: DSLAAttention) -> dict:
    """{name: value} of the layer's output-changing settings that differ from its kind's defaults
    (e.g. {"window": 8} for a sliding window of 8); empty when the kind alone rebuilds the layer."""
    defaults = _UNRECORDED_DEFAULTS.get(layer_kind(layer), {})
    return {name: getattr(layer, name) for name, default in defaults.items() if getattr(layer, name) != default}
