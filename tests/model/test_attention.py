import pytest
import torch
import torch.nn.functional as F

from dsla_serve.kernels import naive_dsla
from dsla_serve.model import DSLAAttention, DSLAConfig
from dsla_serve.model.attention import log_sigmoid

from .helpers import ARCHS, tiny


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_built_from_pretrained_attention_keeps_dtype_device_gqa_and_projections(arch, dtype):
    model = tiny(arch, dtype=dtype)
    attn = model.model.layers[1].self_attn
    twin = DSLAAttention(attn, DSLAConfig(gate_rank=8))
    assert (twin.num_heads, twin.num_kv_heads, twin.head_dim, twin.layer_idx) == (4, 2, 16, 1)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert getattr(twin, name) is getattr(attn, name)  # shared, not copied, until untied
    for p in twin.parameters():
        assert p.device == attn.q_proj.weight.device
    assert twin.gate_history.up.weight.dtype == dtype and twin.gate_recency.down.weight.dtype == dtype
    assert twin.mix_logits.shape == (4, 2)


def test_untie_projections_copies_qkvo():
    attn = tiny().model.layers[0].self_attn
    twin = DSLAAttention(attn)
    assert set(twin.own_parameters()) == {"gate_history.up.weight", "gate_history.up.bias", "gate_recency.up.weight",
                                          "gate_recency.up.bias", "mix_logits", "output_scale"}
    twin.untie_projections()
    assert twin.q_proj is not attn.q_proj and torch.equal(twin.q_proj.weight, attn.q_proj.weight)
    with torch.no_grad():
        twin.q_proj.weight.add_(1.0)
    assert not torch.equal(twin.q_proj.weight, attn.q_proj.weight)
    assert {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"} <= set(twin.own_parameters())


def test_output_scale_is_a_per_head_gain_before_o_proj():
    torch.manual_seed(0)
    attn = tiny().model.layers[0].self_attn
    twin = DSLAAttention(attn)
    x = torch.randn(2, 9, twin.hidden_size)
    base = twin(x)[0]
    gains = torch.tensor([0.5, 2.0, 0.0, 1.0])
    with torch.no_grad():
        twin.output_scale.copy_(gains)
        w = twin.o_proj.weight.clone()
        scaled = twin(x)[0]
        twin.output_scale.fill_(1.0)
        twin.o_proj.weight.mul_(gains.repeat_interleave(twin.head_dim))  # the same gain as W_o columns
        by_columns = twin(x)[0]
        twin.o_proj.weight.copy_(w)
    torch.testing.assert_close(scaled, by_columns)
    assert not torch.allclose(scaled, base)


def test_unsupported_attention_is_named():
    class GPT2Attention(torch.nn.Module):
        pass

    with pytest.raises(TypeError, match="GPT2Attention.*LlamaAttention, MistralAttention, Qwen2Attention"):
        DSLAAttention(GPT2Attention())


SPECIALISED = DSLAConfig(history_gate_bias=4.0, recency_gate_bias=-1.1, gate_init_std=0.0)


def test_specialised_gates_give_a_slow_and_a_fast_state():
    twin = DSLAAttention(tiny().model.layers[0].self_attn, SPECIALISED)
    _, _, _, g1, g2 = twin.project(torch.randn(1, 3, 64))
    decay_history, decay_recency = g1.exp().mean().item(), g2.exp().mean().item()
    assert 0.998 < decay_history < 1.0 and 0.9 < decay_recency < 0.93


def test_default_gates_are_the_papers_init_two_distinct_states_at_a_short_half_life():
    torch.manual_seed(0)
    layer = DSLAAttention(tiny().model.layers[0].self_attn)
    _, _, _, g1, g2 = layer.project(torch.randn(1, 5, 64))
    assert not torch.allclose(g1, g2)  # the random gate weights separate the states
    assert abs(layer.gate_history.up.weight.std().item() - 0.02) < 0.002
    for g in (g1, g2):  # both start near exp(logsigmoid(0) / 16) ~= 0.958
        assert 0.94 < g.exp().mean().item() < 0.97


def test_equal_biases_with_zero_gate_weights_are_one_state_twice_until_gate_init_std_breaks_it():
    attn, x = tiny().model.layers[0].self_attn, torch.randn(1, 5, 64)
    same = DSLAAttention(attn, DSLAConfig(history_gate_bias=0.0, recency_gate_bias=0.0, gate_init_std=0.0))
    _, _, _, g1, g2 = same.project(x)
    assert torch.equal(g1, g2)
    same(x)[0].square().sum().backward()  # identical gradients: training never separates the two states
    assert same.gate_history.up.weight.grad.abs().sum() > 0
    assert torch.equal(same.gate_history.up.weight.grad, same.gate_recency.up.weight.grad)
    torch.manual_seed(0)
    paper = DSLAAttention(attn, DSLAConfig(history_gate_bias=0.0, recency_gate_bias=0.0, gate_init_std=0.02))
    _, _, _, g1, g2 = paper.project(x)
    assert not torch.allclose(g1, g2) and abs(paper.gate_history.up.weight.std().item() - 0.02) < 0.002
    with pytest.raises(ValueError, match="gate_init_std"):
        DSLAConfig(gate_init_std=-0.1)


def test_log_sigmoid_is_logsigmoid():
    x = torch.linspace(-200, 200, 4001, dtype=torch.float64)
    torch.testing.assert_close(log_sigmoid(x), F.logsigmoid(x), rtol=0, atol=1e-12)


def test_forward_is_the_dsla_spec():
    torch.manual_seed(0)
    twin = DSLAAttention(tiny().model.layers[0].self_attn)
    with torch.no_grad():
        twin.gate_history.up.weight.normal_(0, 0.3)
        twin.mix_logits.normal_()
        twin.output_scale.uniform_(0.5, 2.0)  # the per-head gain, folded into the op's read-out weights
    x = torch.randn(2, 9, 64)
    q, k, v, g1, g2 = twin.project(x)
    o, _ = naive_dsla(q, k, v, g1, g2, twin.mix())
    expected = twin.o_proj((o * twin.output_scale[:, None]).reshape(2, 9, -1))
    out, weights = twin(x)
    assert weights is None
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
