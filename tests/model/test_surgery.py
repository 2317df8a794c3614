import copy

import pytest
import torch
import transformers

from dsla_serve.model import (DSLAAttention, DSLAConfig, conversion_order, convert, decoder_layers, dsla_layers,
                              get_depth, layer_kind, set_depth)
from dsla_serve.model.baselines import GatedLinearAttention, LinearAttention, SlidingWindowAttention

from .helpers import ARCHS, randomize_dsla, tiny

IDS = torch.randint(3, 128, (2, 24), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_depth_zero_is_exactly_the_original_model(arch):
    model = tiny(arch)
    reference = logits(model)
    convert(model, [1, 3])
    randomize_dsla(model)
    set_depth(model, 0)
    assert torch.equal(logits(model), reference)


def test_convert_appends_to_the_order_and_activates_everything():
    model = tiny()
    assert conversion_order(model) == [] and get_depth(model) == 0
    assert convert(model, [2, 0], DSLAConfig(gate_rank=4)) is model
    assert conversion_order(model) == [2, 0] and get_depth(model) == 2
    set_depth(model, 1)
    convert(model, [3])  # config defaults to that of the converted layers
    assert conversion_order(model) == [2, 0, 3] and get_depth(model) == 3
    twins = dsla_layers(model)
    assert sorted(twins) == [0, 2, 3] and all(isinstance(t, DSLAAttention) for t in twins.values())
    assert twins[3].config.gate_rank == 4
    assert decoder_layers(model)[2].self_attn.dsla is twins[2]
    # base parameter names are unchanged by conversion
    assert "model.layers.2.self_attn.q_proj.weight" in dict(model.named_parameters())


def test_set_depth_switches_back_and_forth():
    model = tiny()
    reference = logits(model)
    convert(model, [3, 1, 2])
    randomize_dsla(model)
    by_depth = {}
    for depth in (3, 1, 2, 0):
        set_depth(model, depth)
        assert get_depth(model) == depth
        active = [i for i, t in dsla_layers(model).items() if t.active]
        assert sorted(active) == sorted([3, 1, 2][:depth])
        by_depth[depth] = logits(model)
    assert torch.equal(by_depth[0], reference)
    assert not torch.allclose(by_depth[1], reference) and not torch.allclose(by_depth[2], by_depth[1])
    for depth in (2, 3, 1, 0):
        set_depth(model, depth)
        assert torch.equal(logits(model), by_depth[depth])


def test_deepcopy_keeps_the_conversion():
    model = tiny()
    convert(model, [1, 2])
    set_depth(model, 1)
    clone = copy.deepcopy(model)
    assert conversion_order(clone) == [1, 2] and get_depth(clone) == 1
    assert dsla_layers(clone)[1] is not dsla_layers(model)[1]
    assert torch.equal(logits(clone), logits(model))


@pytest.mark.parametrize("layers, message", [
    ([4], r"layer index 4 is out of range: the model has 4 decoder layers \(0..3\)"),
    ([-1], "out of range"),
    ([1, 1], "repeat"),
    ([0, 2], "layer 2 is already converted"),
])
def test_bad_layer_indices_are_refused_before_anything_changes(layers, message):
    model = tiny()
    convert(model, [2])
    set_depth(model, 0)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=message):
        convert(model, layers)
    assert conversion_order(model) == [2] and get_depth(model) == 0
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_set_depth_out_of_range():
    model = convert(tiny(), [0, 1])
    for bad in (-1, 3, 1.0, True):
        with pytest.raises(ValueError, match=r"depth must be an int in \[0, 2\]"):
            set_depth(model, bad)


def test_unsupported_architecture_is_named():
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64)
    model = transformers.GPT2LMHeadModel(config)
    with pytest.raises(TypeError, match=r"GPT2LMHeadModel \(model_type 'gpt2'\).*llama, mistral, qwen2"):
        convert(model, [0])


@pytest.mark.parametrize("kind, cls", [("gla", GatedLinearAttention), ("linear", LinearAttention),
                                       ("swa", SlidingWindowAttention)])
def test_convert_builds_layers_of_the_chosen_kind(kind, cls):
    model = tiny()
    reference = logits(model)
    assert convert(model, [1, 3], kind=kind) is model
    convert(model, [0])  # the kind defaults to that of the converted layers
    twins = dsla_layers(model)
    assert conversion_order(model) == [1, 3, 0] and get_depth(model) == 3
    assert all(type(t) is cls and layer_kind(t) == kind for t in twins.values())
    assert decoder_layers(model)[3].self_attn.dsla is twins[3]
    set_depth(model, 0)
    assert torch.equal(logits(model), reference)


def test_an_unknown_or_second_kind_is_refused_before_anything_changes():
    model = convert(tiny(), [2], kind="gla")
    set_depth(model, 0)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="unknown layer kind 'gru'; choose one of dsla, gla, linear, swa"):
        convert(model, [0], kind="gru")
    with pytest.raises(ValueError, match=r"as 'dsla': the model's converted layers are \['gla'\]"):
        convert(model, [0], kind="dsla")
    assert conversion_order(model) == [2] and get_depth(model) == 0
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
