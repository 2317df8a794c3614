"""The hybrid cache through Hugging Face: decode equivalence, padded batches, generate, cache operations.

Also run against transformers 5.17 by test_transformers_compat.py.
"""

import pytest
import torch
from transformers import DynamicCache, StaticCache

from dsla_serve.model import DSLAAttention, DSLAStateLayer, convert, set_depth
from dsla_serve.model.cache import cache_argument_name, dsla_token_mask, output_cache

from .helpers import ARCHS, left_padded, randomize_dsla, tiny

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # past_key_values is deprecated in 5.2x

GEN = torch.Generator().manual_seed(1)
IDS = torch.randint(3, 128, (2, 21), generator=GEN)
PROMPTS = [[5, 17, 99, 3, 42, 8, 61, 77, 12], [33, 4, 90], [120, 7, 7, 64, 18, 25]]


def hybrid(arch="llama", layers=(0, 2), seed=0):
    """A tiny model with `layers` converted (layer 0 among them by default) and non-trivial gates."""
    model = convert(tiny(arch, seed=seed), list(layers))
    randomize_dsla(model, seed=seed)
    return model


def forward(model, ids, cache=None, mask=None):
    kwargs = {} if cache is None else {cache_argument_name(model): cache, "use_cache": True}
    with torch.no_grad():
        return model(ids, attention_mask=mask, **kwargs)


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_then_token_by_token_decode_equals_one_forward(arch):
    model = hybrid(arch)
    full = forward(model, IDS).logits
    cache = DynamicCache(config=model.config)
    pieces = [forward(model, IDS[:, :13], cache).logits]
    pieces.append(forward(model, IDS[:, 13:16], cache).logits)  # a multi-token chunk with a carried state
    for t in range(16, IDS.shape[1]):
        pieces.append(forward(model, IDS[:, t:t + 1], cache).logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.get_seq_length() == IDS.shape[1]
    assert [type(layer).__name__ for layer in cache.layers] == ["DSLAStateLayer", "DynamicLayer", "DSLAStateLayer",
                                                                 "DynamicLayer"]


def test_model_made_cache_and_every_layer_dsla():
    model = hybrid(layers=(3, 0, 1, 2))
    full = forward(model, IDS).logits
    with torch.no_grad():
        out = model(IDS[:, :10], use_cache=True)  # the model creates the cache itself
    cache = output_cache(out)
    assert all(isinstance(layer, DSLAStateLayer) for layer in cache.layers)
    assert cache.get_seq_length() == 10 and cache.get_mask_sizes(3, 0) == (13, 0)
    state = cache.layers[0].state
    assert state[0].shape == (2, 4, 16, 16) and state[0].dtype == torch.float32
    pieces = [out.logits] + [forward(model, IDS[:, t:t + 1], cache).logits for t in range(10, 21)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.get_seq_length() == 21


def test_lazily_grown_cache_without_config():
    model = hybrid(layers=(2,))
    cache = DynamicCache()  # no config: HF appends layer slots on first use
    forward(model, IDS[:, :5], cache)
    assert [type(layer).__name__ for layer in cache.layers] == ["DynamicLayer", "DynamicLayer", "DSLAStateLayer",
                                                                "DynamicLayer"]
    assert cache.get_seq_length() == 5


def test_left_padding_matches_unpadded_prefill_and_decode():
    model = hybrid()
    ids, mask = left_padded(PROMPTS, model.config.pad_token_id)
    cache = DynamicCache(config=model.config)
    batch = forward(model, ids, cache, mask).logits[:, -1]
    step_ids = torch.tensor([[9], [10], [11]])
    mask = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], dim=1)
    batch_step = forward(model, step_ids, cache, mask).logits[:, -1]
    for i, prompt in enumerate(PROMPTS):
        single_cache = DynamicCache(config=model.config)
        single = forward(model, torch.tensor([prompt]), single_cache).logits[:, -1]
        torch.testing.assert_close(batch[i:i + 1], single, rtol=1e-5, atol=1e-5)
        single_step = forward(model, step_ids[i:i + 1], single_cache).logits[:, -1]
        torch.testing.assert_close(batch_step[i:i + 1], single_step, rtol=1e-5, atol=1e-5)


def test_a_padded_decode_step_leaves_the_states_unchanged():
    model = hybrid(layers=(0, 1, 2, 3))  # all DSLA: positions play no role, so a skipped token is invisible
    a, b, c = torch.tensor([[5, 6, 7]]), torch.tensor([[99]]), torch.tensor([[42]])
    plain = DynamicCache(config=model.config)
    forward(model, a, plain)
    expected = forward(model, c, plain).logits
    padded = DynamicCache(config=model.config)
    forward(model, a, padded)
    forward(model, b, padded, mask=torch.tensor([[1, 1, 1, 0]]))  # a padding token in a decode step
    got = forward(model, c, padded, mask=torch.tensor([[1, 1, 1, 0, 1]])).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    unmasked = DynamicCache(config=model.config)
    forward(model, a, unmasked)
    forward(model, b, unmasked)
    assert not torch.allclose(forward(model, c, unmasked).logits, expected, atol=1e-3)


def greedy(model, ids, mask=None, n=6, **kw):
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask if mask is not None else torch.ones_like(ids),
                              max_new_tokens=n, min_new_tokens=n, do_sample=False, **kw)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("depth", [0, 2])
def test_batched_left_padded_generate_equals_per_prompt_generate(arch, depth):
    model = hybrid(arch, seed=3)
    set_depth(model, depth)
    ids, mask = left_padded(PROMPTS, model.config.pad_token_id)
    batch = greedy(model, ids, mask)[:, ids.shape[1]:]
    for i, prompt in enumerate(PROMPTS):
        single = greedy(model, torch.tensor([prompt]))[0, len(prompt):]
        assert batch[i].tolist() == single.tolist(), (arch, depth, i)
    assert len({tuple(row) for row in batch.tolist()}) > 1  # the prompts really lead to different outputs


def test_padding_would_change_the_output_if_it_entered_the_states():
    model = hybrid(seed=3)
    ids, mask = left_padded(PROMPTS, model.config.pad_token_id)
    with torch.no_grad():
        right = model(ids, attention_mask=mask).logits[1, -1]
        leaked = model(ids).logits[1, -1]  # the padding treated as tokens
    assert not torch.allclose(right, leaked, atol=1e-3)


def test_beam_search_reorders_the_states():
    model = hybrid(seed=3)
    ids, mask = left_padded(PROMPTS[:2], model.config.pad_token_id)
    batch = greedy(model, ids, mask, n=4, num_beams=3)[:, ids.shape[1]:]
    for i, prompt in enumerate(PROMPTS[:2]):
        single = greedy(model, torch.tensor([prompt]), n=4, num_beams=3)[0, len(prompt):]
        assert batch[i].tolist() == single.tolist()


def test_changing_depth_mid_sequence_is_refused():
    model = hybrid()
    cache = DynamicCache(config=model.config)
    forward(model, IDS[:, :5], cache)
    set_depth(model, 0)
    with pytest.raises(RuntimeError, match="depth changed in the middle of a sequence"):
        forward(model, IDS[:, 5:6], cache)
    cache = DynamicCache(config=model.config)
    forward(model, IDS[:, :5], cache)
    set_depth(model, 2)
    with pytest.raises(RuntimeError, match="layer 0 runs as DSLA but its cache slot holds softmax keys/values"):
        forward(model, IDS[:, 5:6], cache)


def test_static_cache_is_refused():
    model = hybrid()
    cache = StaticCache(config=model.config, max_cache_len=32)
    with pytest.raises(TypeError, match="static caches are not supported"):
        forward(model, IDS[:, :5], cache)


def test_state_layer_batch_operations():
    layer = DSLAStateLayer()
    s1, s2 = torch.arange(3.0).view(3, 1, 1, 1), -torch.arange(3.0).view(3, 1, 1, 1)
    layer.advance((s1, s2), 4)
    assert layer.get_seq_length() == 4 and layer.get_mask_sizes(2) == (6, 0)
    layer.reorder_cache(torch.tensor([2, 2, 0]))
    assert layer.state[0].flatten().tolist() == [2, 2, 0] and layer.state[1].flatten().tolist() == [-2, -2, 0]
    layer.batch_select_indices(torch.tensor([0, 2]))
    layer.batch_repeat_interleave(2)
    assert layer.state[0].flatten().tolist() == [2, 2, 0, 0]
    layer.crop(0)
    with pytest.raises(RuntimeError, match="cannot be cropped"):
        layer.crop(-1)
    layer.reset()
    assert layer.state is None and layer.get_seq_length() == 0


def test_an_object_with_the_state_protocol_can_hold_the_states():
    class PooledStates:
        def __init__(self):
            self.states, self.tokens = {}, 0

        def get_dsla_state(self, layer_idx):
            return self.states.get(layer_idx)

        def set_dsla_state(self, layer_idx, state, n_new_tokens):
            self.states[layer_idx] = state
            self.tokens += n_new_tokens

    twin = DSLAAttention(tiny().model.layers[0].self_attn)
    x = torch.randn(2, 11, 64)
    with torch.no_grad():
        whole, _ = twin(x)
        pool = PooledStates()
        first, _ = twin(x[:, :7], cache=pool)
        rest = [twin(x[:, t:t + 1], past_key_values=pool)[0] for t in range(7, 11)]
    torch.testing.assert_close(torch.cat([first] + rest, dim=1), whole, rtol=1e-5, atol=1e-5)
    assert pool.tokens == 11 and pool.states[0][0].shape == (2, 4, 16, 16)


def test_token_mask_from_each_mask_kind():
    keep = torch.tensor([[False, True, True], [True, True, True]])
    # 2-D padding mask over past (2) + current (3) tokens, as flash attention receives it
    padding = torch.cat([torch.ones(2, 2, dtype=torch.long), keep.long()], dim=1)
    assert torch.equal(dsla_token_mask(padding, 2, 3), keep)
    # 4-D boolean (sdpa) and additive float (eager) masks
    causal = torch.ones(3, 5, dtype=torch.bool).tril(diagonal=2)
    sdpa = causal[None, None] & padding.bool()[:, None, None, :]
    assert torch.equal(dsla_token_mask(sdpa, 2, 3), keep)
    eager = torch.zeros(2, 1, 3, 5).masked_fill(~sdpa, torch.finfo(torch.float32).min)
    assert torch.equal(dsla_token_mask(eager, 2, 3), keep)
    assert dsla_token_mask(None, 2, 3) is None
    with pytest.raises(ValueError, match="does not match 4 query tokens"):
        dsla_token_mask(sdpa, 2, 4)
