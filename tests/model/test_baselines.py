"""Baseline attention replacements (gla, linear, swa): definitions, cache, padding, model surgery."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dsla_serve.kernels import naive_dsla
from dsla_serve.model import DSLAAttention, DSLAConfig, set_depth
from dsla_serve.model.baselines import (GatedLinearAttention, LinearAttention, SlidingWindowAttention, layer_class,
                                         layer_kind, non_default_settings)
from dsla_serve.model.surgery import attach_twin

from .helpers import tiny

KINDS = ("gla", "linear", "swa")


def _inputs(model, B=2, T=29, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, model.config.hidden_size, generator=gen)
    pos = torch.arange(T)[None].expand(B, T)
    return x, model.model.rotary_emb(x, pos)


def _build(kind, model, layer=0, **kw):
    torch.manual_seed(1)
    layer_mod = layer_class(kind)(model.model.layers[layer].self_attn, **kw)
    if kind == "gla":  # a non-trivial, input-dependent gate
        with torch.no_grad():
            layer_mod.gate_history.up.weight.normal_(0, 0.3)
    return layer_mod


class DictCache:
    """The minimal cache protocol of DSLA layers."""

    def __init__(self):
        self.states, self.seen = {}, {}

    def get_dsla_state(self, i):
        return self.states.get(i)

    def set_dsla_state(self, i, state, n):
        self.states[i] = state
        self.seen[i] = self.seen.get(i, 0) + n


@pytest.mark.parametrize("kind", KINDS)
def test_forward_shape_and_parameters(kind):
    model = tiny()
    layer = _build(kind, model)
    x, pe = _inputs(model)
    y, weights = layer(x, position_embeddings=pe, attention_mask=None)
    assert y.shape == x.shape and weights is None and torch.isfinite(y).all()
    assert isinstance(layer, DSLAAttention) and layer.KIND == kind
    own = set(layer.own_parameters())
    assert own == ({"gate_history.up.weight", "gate_history.up.bias"} if kind == "gla" else set()) | {"output_scale"}
    layer.untie_projections()
    assert {"q_proj.weight", "o_proj.weight"} <= set(layer.own_parameters())


def test_single_state_equals_dsla_with_mix_one_zero():
    model = tiny()
    gla = _build("gla", model)
    x, pe = _inputs(model)
    q, k, v, g1, g2 = gla.project(x)
    assert torch.equal(g1, g2) and (g1 < 0).all() and g1.std() > 0
    o, _ = naive_dsla(q, k, v, g1, g1, torch.tensor([1.0, 0.0]))
    expected = gla.o_proj(o.reshape(*x.shape[:2], -1))
    y, _ = gla(x, position_embeddings=pe)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)
    # the second state's decay is irrelevant once its weight is 0
    o_other, _ = naive_dsla(q, k, v, g1, torch.zeros_like(g1), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(o_other, o, rtol=1e-5, atol=1e-6)


def test_gla_gate_bias_sets_initial_decay():
    model = tiny()
    zero_weights = DSLAConfig(gate_init_std=0.0)  # so every token's decay is the bias's
    gla = GatedLinearAttention(model.model.layers[0].self_attn, zero_weights, gate_bias=2.0)
    x, _ = _inputs(model)
    g = gla.project(x)[3]
    torch.testing.assert_close(g, torch.full_like(g, F.logsigmoid(torch.tensor(2.0)).item() / 16))


def test_linear_attention_equals_explicit_formula():
    model = tiny()
    lin = _build("linear", model)
    x, pe = _inputs(model)
    q, k, v = (t.double() for t in lin.qkv(x))
    G = lin.num_heads // lin.num_kv_heads
    k, v = k.repeat_interleave(G, 2), v.repeat_interleave(G, 2)
    pq, pk = F.elu(q) + 1, F.elu(k) + 1
    num = torch.einsum("bthk,bthkv->bthv", pq, torch.einsum("bthk,bthv->bthkv", pk, v).cumsum(1))
    den = torch.einsum("bthk,bthk->bth", pq, pk.cumsum(1))[..., None]
    expected = lin.o_proj((num / den).float().reshape(*x.shape[:2], -1))
    y, _ = lin(x, position_embeddings=pe)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)


def _window_mask(B, T, window):
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (j <= i) & (i - j < window)
    return torch.where(allowed, 0.0, float("-inf"))[None, None].expand(B, 1, T, T)


@pytest.mark.parametrize("window", [1, 8, 64])
def test_sliding_window_equals_masked_softmax_attention(window):
    """The original Hugging Face layer with a banded causal mask computes the same function."""
    model = tiny()
    attn = model.model.layers[0].self_attn
    swa = SlidingWindowAttention(attn, window=window)
    x, pe = _inputs(model, T=40)
    expected, _ = attn(x, position_embeddings=pe, attention_mask=_window_mask(2, 40, window))
    y, _ = swa(x, position_embeddings=pe)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_then_decode_equals_full_forward(kind):
    model = tiny()
    layer = _build(kind, model, **({"window": 8} if kind == "swa" else {}))
    x, (cos, sin) = _inputs(model, T=30)
    full, _ = layer(x, position_embeddings=(cos, sin))
    cache = DictCache()
    pieces, start = [], 0
    for stop in (5, 6, 7, 19, 20, 30):  # an uneven prefill, single decode steps, a 12-token chunk
        part, _ = layer(x[:, start:stop], position_embeddings=(cos[:, start:stop], sin[:, start:stop]), cache=cache)
        pieces.append(part)
        start = stop
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-4, atol=1e-5)
    assert cache.seen[layer.layer_idx] == 30


def _real_token_mask(keep):
    """HF-style 4-D bool mask [B, 1, T, T]: causal and the key is a real token."""
    T = keep.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return (causal[None] & keep[:, None, :])[:, None]


@pytest.mark.parametrize("kind", KINDS)
def test_left_padding_changes_nothing(kind):
    model = tiny()
    layer = _build(kind, model, **({"window": 8} if kind == "swa" else {}))
    x, pe = _inputs(model, B=1, T=20)
    alone, _ = layer(x, position_embeddings=pe)
    pad = 5
    xp = torch.cat([torch.randn(1, pad, x.shape[-1]), x], 1)
    _, pe_p = _inputs(model, B=1, T=20 + pad)  # positions shift by `pad`: only relative ones matter
    keep = torch.tensor([[False] * pad + [True] * 20])
    cache = DictCache()
    padded, _ = layer(xp, position_embeddings=pe_p, attention_mask=_real_token_mask(keep), cache=cache)
    torch.testing.assert_close(padded[:, pad:], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_in_a_model_with_hugging_face_cache(kind):
    """Attached by model surgery: depth 0 is the original model; at depth 2 incremental decoding
    through Hugging Face's own dynamic cache equals one full forward."""
    model = tiny(num_layers=2)
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(ids).logits
        for position, i in enumerate((1, 0)):
            attach_twin(model, i, _build(kind, model, i, **({"window": 8} if kind == "swa" else {})), position)
        set_depth(model, 0)
        torch.testing.assert_close(model(ids).logits, reference)
        set_depth(model, 2)
        full = model(ids).logits
        assert not torch.allclose(full, reference)
        out = model(ids[:, :10], use_cache=True)
        steps, cache = [out.logits], out.past_key_values
        for t in range(10, 24):
            out = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits)
            cache = out.past_key_values
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown layer kind 'gru'"):
        layer_class("gru")
    with pytest.raises(ValueError, match="window"):
        SlidingWindowAttention(tiny().model.layers[0].self_attn, window=0)


def test_layer_kind_names_the_exact_class_and_settings_off_the_default_are_listed():
    attn = tiny().model.layers[0].self_attn
    for kind in ("dsla",) + KINDS:
        layer = layer_class(kind)(attn)
        assert layer_kind(layer) == kind and non_default_settings(layer) == {}
    assert non_default_settings(SlidingWindowAttention(attn, window=8)) == {"window": 8}
    assert non_default_settings(LinearAttention(attn, eps=1e-3)) == {"eps": 1e-3}
    assert non_default_settings(GatedLinearAttention(attn, gate_bias=2.0)) == {}  # only an initial value

    class Custom(DSLAAttention):
        pass

    with pytest.raises(TypeError, match="Custom is not a layer kind of dsla, gla, linear, swa"):
        layer_kind(Custom(attn))
