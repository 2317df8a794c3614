"""Merged q/k/v and gate/up weights share storage with the model's Linears and change no output."""

import torch

from dsla_serve.replicas.merged_weights import merge_linears

from .helpers import tiny_converted


def test_merged_weights_are_views_and_outputs_are_unchanged():
    model = tiny_converted("qwen2", seed=1)  # q/k/v with biases
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = model(ids).logits
    attn = model.model.layers[0].self_attn
    weight, bias = merge_linears(attn, ("q_proj", "k_proj", "v_proj"))
    nq, nk = attn.q_proj.out_features, attn.k_proj.out_features
    assert weight.shape == (nq + 2 * nk, attn.q_proj.in_features) and bias.shape == (nq + 2 * nk,)
    assert attn.k_proj.weight.data_ptr() == weight[nq].data_ptr()  # a view: no copy kept
    assert merge_linears(attn, ("q_proj", "k_proj", "v_proj"))[0] is weight  # cached
    mlp = model.model.layers[0].mlp
    gate_up, none = merge_linears(mlp, ("gate_proj", "up_proj"))
    assert none is None and mlp.up_proj.weight.data_ptr() == gate_up[mlp.gate_proj.out_features].data_ptr()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    x = torch.randn(3, attn.q_proj.in_features)
    torch.testing.assert_close(torch.nn.functional.linear(x, weight, bias),
                               torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=1))
    model.double()  # new storage for every Linear: the stale merge is rebuilt
    assert merge_linears(attn, ("q_proj", "k_proj", "v_proj"))[0].dtype == torch.float64
    assert merge_linears(mlp, ("gate_proj", "not_there")) is None
