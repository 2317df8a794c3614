"""The hybrid cache: softmax keys/values for attention layers, a fixed-size dual state for DSLA layers.

Design (why it is not a Cache subclass)
---------------------------------------
A Hugging Face `Cache` (transformers 5.x, both 5.17 and 5.2x) is a container of per-layer objects
(`cache.layers[i]`, each a `CacheLayerMixin`), and everything the library asks of a cache goes
through them: `get_seq_length()` and `get_mask_sizes()` (positions and mask width, read from layer 0
or the first full-attention layer), `reorder_cache` (beam search), `batch_select_indices`,
`batch_repeat_interleave`, `crop`, `reset`, `offload`/`prefetch`.

So a DSLA layer keeps its state in a `DSLAStateLayer` that it installs in the slot of whatever
dynamic cache Hugging Face passes (the `DynamicCache` that `generate` creates, one a caller makes
and passes as `past_key_values`/`cache`, or a subclass). That layer object holds the pair of states
and counts the tokens it has absorbed, so the library's own seq-length and mask-size logic stays
right when layer 0 is DSLA or when every layer is, and every cache operation above acts on the DSLA
states too. Nothing special is needed at the call site: plain `model.generate(...)` works.

Alternatives rejected:
- a `DynamicCache` subclass: `generate` would not create it without a custom argument or patching
  generation internals, which differ between 5.17 and 5.2x;
- a side table plus zero-width key/value tensors ([B, Hk, T, 0]) to register the token count:
  `DynamicLayer.get_seq_length()` returns 0 whenever `keys.numel() == 0`, so a zero-width tensor
  counts as no tokens, and beam search / batch selection would not touch a side table.

A cache object that brings its own DSLA state storage (for example a serving engine's pooled states)
can instead implement the protocol `get_dsla_state(layer_idx) -> (s1, s2) | None` and
`set_dsla_state(layer_idx, state, n_new_tokens)`; DSLA layers use it when present.

A cache belongs to one depth: a layer that switches between softmax attention and DSLA in the middle
of a sequence finds the other kind of entry in its slot and raises; start a new cache after
`set_depth`. Only dynamic caches are supported (a `StaticCache` sizes masks by its capacity).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import CacheLayerMixin, DynamicLayer

DSLAState = tuple[torch.Tensor, torch.Tensor]

_DEPTH_CHANGED = ("the depth changed in the middle of a sequence (set_depth after this cache was filled); "
                  "start a new cache")


class DSLAStateLayer(CacheLayerMixin):
    """The cache entry of one DSLA layer: the pair of states, each [B, H, K, V] fp32, and a token count.

    It answers Hugging Face's per-layer cache calls, so `get_seq_length()` / `get_mask_sizes()` count
    the tokens this layer has seen, and beam search or batch selection reorder the states.
    """

    is_sliding = False
    is_compileable = False
    is_croppable = False  # a recurrent state cannot be rolled back (no assisted decoding)
    supports_early_init = False

    def __init__(self):
        super().__init__()
        self.state: DSLAState | None = None
        self.seen_tokens = 0

    def __repr__(self):
        return f"DSLAStateLayer(seen_tokens={self.seen_tokens})"

    # --- what a DSLA layer calls ------------------------------------------------------------
    def advance(self, state: DSLAState, n_new_tokens: int) -> None:
        """Store the states after `n_new_tokens` more tokens (padding included: positions count them)."""
        self.state = state
        self.seen_tokens += int(n_new_tokens)
        self.is_initialized = True

    # --- Hugging Face's per-layer interface --------------------------------------------------
    def lazy_initialization(self, key_states, value_states) -> None:
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        raise RuntimeError("this cache slot holds a DSLA state but a softmax attention layer wrote to it: "
                           + _DEPTH_CHANGED)

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.state, self.seen_tokens, self.is_initialized = None, 0, False

    def _map_state(self, fn) -> None:
        if self.state is not None:
            self.state = tuple(fn(s) for s in self.state)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_state(lambda s: s.index_select(0, beam_idx.to(s.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_state(lambda s: s[indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_state(lambda s: s.repeat_interleave(repeats, dim=0))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise RuntimeError("a DSLA state cannot be cropped (it keeps no per-token history)")

    def offload(self) -> None:
        if self.state is not None:
            self.device = self.state[0].device
            self._map_state(lambda s: s.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        device = getattr(self, "device", None)
        if self.state is not None and device is not None and self.state[0].device != device:
            self._map_state(lambda s: s.to(device, non_blocking=True))


def dsla_state_layer(cache, layer_idx: int) -> DSLAStateLayer:
    """The `DSLAStateLayer` in slot `layer_idx` of a Hugging Face dynamic cache, installed if absent.

    Raises TypeError for caches without per-layer dynamic slots, RuntimeError if the slot already
    holds softmax keys/values (the depth changed mid-sequence).
    """
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list):
        raise TypeError(f"DSLA layers need a Hugging Face dynamic cache (DynamicCache) or an object with "
                        f"get_dsla_state/set_dsla_state; got {type(cache).__name__}")
    if layer_idx < len(layers):
        slot = layers[layer_idx]
        if isinstance(slot, DSLAStateLayer):
            return slot
        if not isinstance(slot, DynamicLayer):
            raise TypeError(f"DSLA layer {layer_idx} needs a dynamic cache slot; {type(cache).__name__} holds a "
                            f"{type(slot).__name__} there (static caches are not supported)")
        if slot.get_seq_length() > 0:
            raise RuntimeError(f"layer {layer_idx} runs as DSLA but its cache slot holds softmax keys/values: "
                               + _DEPTH_CHANGED)
    else:  # a lazily grown cache (DynamicCache without a config): pad with its default layer type
        make = getattr(cache, "layer_class_to_replicate", None)
        if make is None:
            raise TypeError(f"{type(cache).__name__} has no slot for layer {layer_idx} and cannot grow one")
        while len(layers) < layer_idx:
            layers.append(make())
        layers.append(None)
    layers[layer_idx] = DSLAStateLayer()
    return layers[layer_idx]


def get_dsla_state(cache, layer_idx: int) -> DSLAState | None:
    """The states carried into this forward for layer `layer_idx` (None = zeros, a new sequence)."""
    if hasattr(cache, "get_dsla_state"):
        return cache.get_dsla_state(layer_idx)
    return dsla_state_layer(cache, layer_idx).state


def set_dsla_state(cache, layer_idx: int, state: DSLAState, n_new_tokens: int) -> None:
    """Store the states of layer `layer_idx` after a forward over `n_new_tokens` tokens."""
    if hasattr(cache, "set_dsla_state"):
        cache.set_dsla_state(layer_idx, state, n_new_tokens)
    else:
        dsla_state_layer(cache, layer_idx).advance(state, n_new_tokens)


def dsla_token_mask(attention_mask, batch_size: int, query_length: int) -> torch.Tensor | None:
    """Which of the current tokens are real (not padding), from the mask HF gives an attention layer.

    Args:
        attention_mask: what the decoder layer receives: None (no padding), a 4-D mask
            [B, 1 or H, T, L] (bool, True = attend, for sdpa; additive float, 0 = attend, for eager),
            or a 2-D padding mask [B, L] (flash attention). The T current tokens are the last T of
            the L key positions (dynamic caches), so token t is real iff it may attend to itself:
            mask[b, :, t, L - T + t].
        batch_size, query_length: B and T of the current hidden states.

    Returns:
        [B, T] bool (True = real token), or None when every token is real.
    """
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise NotImplementedError(f"DSLA layers cannot read a {type(attention_mask).__name__} attention mask "
                                  "(flex attention); use the sdpa, eager or flash attention implementation")
    T = query_length
    if attention_mask.dim() == 2:
        keep = attention_mask[:, -T:]
        return keep if keep.dtype == torch.bool else keep != 0
    if attention_mask.dim() != 4:
        raise ValueError(f"unexpected attention mask shape {tuple(attention_mask.shape)}: expected 2-D or 4-D")
    L = attention_mask.shape[-1]
    if attention_mask.shape[-2] != T or L < T:
        raise ValueError(f"attention mask {tuple(attention_mask.shape)} does not match {T} query tokens")
    t = torch.arange(T, device=attention_mask.device)
    diagonal = attention_mask[:, 0, t, L - T + t]  # [B, T]
    keep = diagonal if diagonal.dtype == torch.bool else diagonal == 0
    return keep.expand(batch_size, T)


# --- calling a model with a cache under transformers 5.17 and 5.2x ------------------------------

def cache_argument_name(model) -> str:
    """The forward keyword that takes the cache: "cache" (transformers >= 5.2x) or "past_key_values"
    (5.17; still accepted, with a deprecation warning, by 5.2x)."""
    import inspect

    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def output_cache(outputs):
    """The cache a forward returned: `outputs.cache` (5.2x) or `outputs.past_key_values` (5.17)."""
    cache = getattr(outputs, "cache", None)
    return cache if cache is not None else getattr(outputs, "past_key_values", None)
