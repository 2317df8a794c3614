"""`recurrent_dsla_torch` and the pooled decode step equal the reference `naive_dsla`."""

import pytest
import torch

from dsla_serve.kernels import PackedSequences, naive_dsla, recurrent_dsla
from dsla_serve.kernels.chunk import chunk_dsla_torch
from dsla_serve.kernels.dispatch import recurrent_dsla_pool
from dsla_serve.kernels.recurrent import recurrent_dsla_pool_torch, recurrent_dsla_torch

from .utils import DSLAInputs, assert_close, compare_with_reference, make_inputs, nan_poisoned_allocations


@pytest.fixture(autouse=True)
def _poisoned_allocations():
    with nan_poisoned_allocations():
        yield


def run_recurrent(cu_seqlens=None):
    def run(x: DSLAInputs):
        return recurrent_dsla_torch(*x.args(), initial_state=x.initial_state, output_final_state=True,
                                    cu_seqlens=cu_seqlens)
    return run


CASES = {
    "T1-GQA": dict(T=1),
    "T1-MHA-mix2": dict(T=1, H=2, Hk=2, mix_per_head=False),
    "T1-MQA-zero-state": dict(T=1, Hk=1, initial_state=False),
    "T9-GQA": dict(T=9, K=5, V=3),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_matches_naive(case, dtype):
    torch.manual_seed(0)
    compare_with_reference(run_recurrent(), make_inputs(**CASES[case]), dtype)


def test_long_sequence_2048_forward():
    torch.manual_seed(0)
    x = make_inputs(B=1, T=2048, H=2, Hk=1, K=8, V=8, strong_decay=True)
    compare_with_reference(run_recurrent(), x, torch.float32, with_grads=False)


def test_packed_decode_step_equals_batched_step():
    """N sequences decoding one token each, packed as [1, N] with cu_seqlens = 0..N, equal a batch."""
    torch.manual_seed(0)
    x = make_inputs(B=3, T=1)
    o_batched, s_batched = run_recurrent()(x)
    packed = DSLAInputs(*(t.transpose(0, 1) for t in x.args()[:5]), x.mix, x.initial_state)
    o_packed, s_packed = run_recurrent(torch.arange(4))(packed)
    assert_close("o", o_packed.transpose(0, 1), o_batched, 1e-14)
    assert_close("s1", s_packed[0], s_batched[0], 1e-14)
    assert_close("s2", s_packed[1], s_batched[1], 1e-14)


def test_varlen_matches_per_sequence_loop():
    torch.manual_seed(0)
    bounds = [0, 3, 3, 10]
    x = make_inputs(B=1, T=bounds[-1], num_states=len(bounds) - 1)

    def per_sequence_naive(x: DSLAInputs):
        outs, s1, s2 = [], [], []
        for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
            state = tuple(s[i:i + 1] for s in x.initial_state)
            o, (f1, f2) = naive_dsla(*(t[:, a:b] for t in x.args()[:5]), x.mix, initial_state=state,
                                     output_final_state=True)
            outs.append(o), s1.append(f1), s2.append(f2)
        return torch.cat(outs, dim=1), (torch.cat(s1), torch.cat(s2))

    compare_with_reference(run_recurrent(torch.tensor(bounds)), x, torch.float32, reference=per_sequence_naive)
    # the offsets described on the host, as chunk_dsla takes them: the same result
    x32 = x.to(torch.float32)
    kw = dict(initial_state=x32.initial_state, output_final_state=True)
    o, (s1, s2) = recurrent_dsla(*x32.args(), cu_seqlens=torch.tensor(bounds), **kw)
    o_p, (p1, p2) = recurrent_dsla(*x32.args(), cu_seqlens=PackedSequences.of(bounds, "cpu"), **kw)
    assert torch.equal(o, o_p) and torch.equal(s1, p1) and torch.equal(s2, p2)


def test_chunked_prefill_then_recurrent_decode_equals_whole():
    """The serving pattern: chunk over a prompt, then token steps from the carried state."""
    torch.manual_seed(0)
    x = make_inputs(B=2, T=40).to(torch.float32)
    o_whole, s_whole = naive_dsla(*x.args(), initial_state=x.initial_state, output_final_state=True)
    o, state = chunk_dsla_torch(*(t[:, :35] for t in x.args()[:5]), x.mix, initial_state=x.initial_state,
                                output_final_state=True)
    outs = [o]
    for t in range(35, 40):
        o, state = recurrent_dsla(*(u[:, t:t + 1] for u in x.args()[:5]), x.mix, initial_state=state,
                                  output_final_state=True)
        outs.append(o)
    assert_close("o", torch.cat(outs, dim=1), o_whole, 2e-6)
    assert_close("s1", state[0], s_whole[0], 2e-6)
    assert_close("s2", state[1], s_whole[1], 2e-6)


@pytest.mark.parametrize("pool_step", [recurrent_dsla_pool_torch, recurrent_dsla_pool], ids=["torch", "dispatch"])
def test_pool_step_updates_only_addressed_rows(pool_step):
    torch.manual_seed(0)
    P, slots = 6, torch.tensor([4, 1, 3])
    x = make_inputs(B=3, T=4).to(torch.float32)
    s1_pool = torch.full((P, 4, 8, 6), float("nan"))
    s2_pool = torch.full((P, 4, 8, 6), float("nan"))
    s1_pool[slots], s2_pool[slots] = x.initial_state
    expected_o, expected_state = recurrent_dsla_torch(*x.args(), initial_state=x.initial_state,
                                                      output_final_state=True)
    for t in range(4):
        o = pool_step(*(u[:, t:t + 1] for u in x.args()[:5]), x.mix, (s1_pool, s2_pool), slots)
        assert o.shape == (3, 1, 4, 6) and o.dtype == torch.float32
        assert_close(f"o[{t}]", o, expected_o[:, t:t + 1], 1e-6)
    assert_close("pool s1", s1_pool[slots], expected_state[0], 1e-6)
    assert_close("pool s2", s2_pool[slots], expected_state[1], 1e-6)
    untouched = torch.tensor([0, 2, 5])
    assert torch.isnan(s1_pool[untouched]).all() and torch.isnan(s2_pool[untouched]).all()


def test_pool_step_rejects_bad_pool_or_slots():
    torch.manual_seed(0)
    x = make_inputs(B=2, T=1, initial_state=False).to(torch.float32)
    pool = (torch.zeros(4, 4, 8, 6), torch.zeros(4, 4, 8, 6))
    cases = [
        (dict(slots=torch.tensor([1, 1])), "slots must be distinct"),
        (dict(slots=torch.tensor([0, 4])), r"slots must lie in \[0, 4\)"),
        (dict(slots=torch.tensor([0])), r"slots must be an int64 tensor of shape \[B=2\]"),
        (dict(state_pool=(pool[0], pool[1][:, :2])), r"state_pool\[1\] must be \[P, H=4"),
        (dict(state_pool=(pool[0].double(), pool[1])), "both pool tensors must be float32"),
        (dict(state_pool=pool[0]), "state_pool must be a pair"),
    ]
    for change, message in cases:
        kwargs = dict(state_pool=pool, slots=torch.tensor([0, 2]))
        kwargs.update(change)
        with pytest.raises(ValueError, match=message):
            recurrent_dsla_pool_torch(*x.args(), **kwargs)
    two_tokens = make_inputs(B=2, T=2, initial_state=False).to(torch.float32)
    with pytest.raises(ValueError, match="needs T = 1"):
        recurrent_dsla_pool_torch(*two_tokens.args(), pool, torch.tensor([0, 2]))


def test_rejects_bad_input():
    torch.manual_seed(0)
    x = make_inputs(B=1, T=2).to(torch.float32)
    with pytest.raises(ValueError, match="g1 holds log-decays"):
        recurrent_dsla_torch(x.q, x.k, x.v, -x.g1 + 0.1, x.g2, x.mix)
    with pytest.raises(ValueError, match=r"mix must be a tensor of shape \[2\] or \[H=4, 2\]"):
        recurrent_dsla_torch(*x.args()[:5], torch.ones(2, 2))
