"""Merged projection weights share storage with the model's Linears and change no output."""

import torch

from dsla_serve.model import dsla_layers
from dsla_serve.replicas.merged_weights import merge_linears

from .helpers import tiny_converted


def test_merged_weights_are_views_and_outputs_are_unchanged():
    model = tiny_converted("qwen2", seed=1)  # q/k/v with biases
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = model(ids).logits
    attn = model.model.layers[0].self_attn
    qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
    weight, bias = merge_linears(qkv)
    nq, nk = attn.q_proj.out_features, attn.k_proj.out_features
    assert weight.shape == (nq + 2 * nk, attn.q_proj.in_features) and bias.shape == (nq + 2 * nk,)
    assert attn.k_proj.weight.data_ptr() == weight[nq].data_ptr()  # a view: no copy kept
    again, _ = merge_linears(qkv)
    assert again.data_ptr() == weight.data_ptr()  # already merged: a view of the same rows, no copy
    mlp = model.model.layers[0].mlp
    gate_up, none = merge_linears([mlp.gate_proj, mlp.up_proj])
    assert none is None and mlp.up_proj.weight.data_ptr() == gate_up[mlp.gate_proj.out_features].data_ptr()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    x = torch.randn(3, attn.q_proj.in_features)
    torch.testing.assert_close(torch.nn.functional.linear(x, weight, bias),
                               torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=1))
    model.double()  # new storage for every Linear: merged again
    assert merge_linears(qkv)[0].dtype == torch.float64
    assert merge_linears([mlp.gate_proj, torch.nn.Identity()]) is None


def test_a_dsla_layer_merges_qkv_and_gates_and_its_qkv_stay_a_view():
    """q/k/v plus both gate projections (biases only on the gates) as one GEMM; afterwards the softmax
    path's q/k/v merge is a view into it (nothing copied when a layer switches kind)."""
    model = tiny_converted("llama", seed=2)
    twin = dsla_layers(model)[0]
    x = torch.randn(1, 5, twin.hidden_size)
    with torch.no_grad():
        want = twin.project(x, gate_logits=True)
        weight, bias = merge_linears(twin.projection_linears())
        got = twin.split_projection(torch.nn.functional.linear(x, weight, bias))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    nqkv = twin.q_proj.out_features + 2 * twin.k_proj.out_features
    assert bias is not None and not bias[:nqkv].any() and bias[nqkv:].any()
    qkv, none = merge_linears([twin.q_proj, twin.k_proj, twin.v_proj])
    assert none is None and qkv.data_ptr() == weight.data_ptr() and qkv.shape[0] == nqkv


def test_low_rank_gates_merge_their_down_projections_and_expand_from_the_column_views():
    """Low-rank gates: the merged GEMM holds each gate's `down`; `split_projection` expands those
    column views (bias included, one addmm each, reading the view in place) to what `project` gives."""
    from dsla_serve.model import DSLAAttention, DSLAConfig

    from ..model.helpers import tiny

    twin = DSLAAttention(tiny().model.layers[1].self_attn, DSLAConfig(gate_rank=8, gate_init_std=0.1))
    x = torch.randn(2, 5, twin.hidden_size)
    with torch.no_grad():
        want = twin.project(x, gate_logits=True)
        weight, bias = merge_linears(twin.projection_linears())
        y = torch.nn.functional.linear(x, weight, bias)
        got = twin.split_projection(y)
        code = y[..., -8:]  # the recency gate's down output, a column view
        assert code.reshape(-1, 8).data_ptr() == code.data_ptr()  # expand reads it without a copy
        torch.testing.assert_close(twin.gate_recency.expand(code), twin.gate_recency(x))
    assert weight.shape[0] == twin.q_proj.out_features + 2 * twin.k_proj.out_features + 2 * 8
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert not torch.equal(got[3], got[4])  # two gates, each from its own columns


def test_low_rank_gates_of_the_reference_model_expand_from_the_merged_output():
    """The same on SmolLM2-135M-Instruct's layer shape (9 query / 3 KV heads, head dim 64, rank 16)."""
    from dsla_serve.model import DSLAAttention, DSLAConfig

    from ..reference import load_reference

    model, _ = load_reference()
    twin = DSLAAttention(model.model.layers[3].self_attn, DSLAConfig(gate_rank=16, gate_init_std=0.02))
    x = torch.randn(7, twin.hidden_size)
    with torch.no_grad():
        want = twin.project(x[None], gate_logits=True)
        weight, bias = merge_linears(twin.projection_linears())
        got = twin.split_projection(torch.nn.functional.linear(x, weight, bias)[None])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert got[3].shape == (1, 7, 9, 64) and not torch.equal(got[3], got[4])
