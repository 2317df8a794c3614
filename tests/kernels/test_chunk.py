"""`chunk_dsla_torch` equals the reference `naive_dsla`: outputs, final states and gradients."""

import pytest
import torch

from dsla_serve.kernels import chunk as chunk_module
from dsla_serve.kernels import PackedSequences, chunk_dsla, naive_dsla
from dsla_serve.kernels.chunk import chunk_dsla_torch

from .utils import (DSLAInputs, assert_close, compare_with_reference, make_inputs, nan_poisoned_allocations,
                    rel_rms)


@pytest.fixture(autouse=True)
def _poisoned_allocations():
    with nan_poisoned_allocations():
        yield


@pytest.fixture(params=["factorized", "subchunked"])
def intra_form(request, monkeypatch):
    """Run a test through each of the two intra-chunk forms (realistic gates pick 'factorized')."""
    if request.param == "subchunked":
        monkeypatch.setattr(chunk_module, "FACTORIZE_MAX_LOG_DECAY", -1.0)
    return request.param


def run_chunk(chunk_size=64, scale=None, cu_seqlens=None):
    def run(x: DSLAInputs):
        return chunk_dsla_torch(*x.args(), scale=scale, initial_state=x.initial_state, output_final_state=True,
                                cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    return run


CASES = {  # name: (make_inputs kwargs, chunk_size)
    "T1": (dict(T=1), 64),
    "T37-mix2": (dict(T=37, mix_per_head=False), 64),
    "T64-MHA": (dict(T=64, H=2, Hk=2), 64),
    "T150-MQA-zero-state": (dict(T=150, Hk=1, initial_state=False), 64),
    "T150-chunk32": (dict(T=150, K=5, V=7), 32),
    "T50-chunk16": (dict(T=50, B=1), 16),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_matches_naive(case, dtype, intra_form):
    torch.manual_seed(0)
    kwargs, chunk_size = CASES[case]
    compare_with_reference(run_chunk(chunk_size), make_inputs(**kwargs), dtype)


def test_custom_scale():
    torch.manual_seed(0)
    compare_with_reference(run_chunk(scale=0.3), make_inputs(T=20), torch.float64,
                           reference=lambda x: naive_dsla(*x.args(), scale=0.3, initial_state=x.initial_state,
                                                          output_final_state=True))


def test_long_sequence_2048():
    torch.manual_seed(0)
    x = make_inputs(B=1, T=2048, H=2, Hk=1, K=8, V=8)
    compare_with_reference(run_chunk(), x, torch.float32)


def test_strong_decays_long_sequence_stay_finite_and_exact(monkeypatch):
    """Log-decays down to -5 per step: a chunk's cumulative log-decay reaches about -160, whose
    exp(+160) overflows fp32 (and exp(+320) over two chunks would overflow even fp64)."""
    subchunked_calls = []
    subchunked = chunk_module._intra_chunk_subchunked
    monkeypatch.setattr(chunk_module, "_intra_chunk_subchunked",
                        lambda *args: subchunked_calls.append(1) or subchunked(*args))
    torch.manual_seed(0)
    x = make_inputs(B=1, T=2048, H=2, Hk=1, K=8, V=8, strong_decay=True)
    compare_with_reference(run_chunk(), x, torch.float32)  # NaN/inf anywhere would fail it
    compare_with_reference(run_chunk(), x, torch.float64, with_grads=False)
    assert len(subchunked_calls) == 2, "strong decays must take the sub-chunked intra-chunk form"


def test_strong_decays_break_unguarded_factorization(monkeypatch):
    """The guard is needed: forcing the factorized form on strong decays overflows in fp32."""
    monkeypatch.setattr(chunk_module, "FACTORIZE_MAX_LOG_DECAY", float("inf"))
    torch.manual_seed(0)
    x = make_inputs(B=1, T=256, H=1, Hk=1, K=4, V=4, strong_decay=True).to(torch.float32)
    o, _ = chunk_dsla_torch(*x.args())
    assert not torch.isfinite(o).all()


def test_varlen_matches_per_sequence_loop(intra_form):
    torch.manual_seed(0)
    bounds = [0, 5, 5, 70, 150]  # four sequences, one of them empty
    cu_seqlens = torch.tensor(bounds, dtype=torch.int32)
    x = make_inputs(B=1, T=bounds[-1], num_states=len(bounds) - 1)

    def per_sequence_naive(x: DSLAInputs):
        outs, s1, s2 = [], [], []
        for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
            piece = [t[:, a:b] for t in x.args()[:5]]
            state = tuple(s[i:i + 1] for s in x.initial_state)
            o, (f1, f2) = naive_dsla(*piece, x.mix, initial_state=state, output_final_state=True)
            outs.append(o), s1.append(f1), s2.append(f2)
        return torch.cat(outs, dim=1), (torch.cat(s1), torch.cat(s2))

    for dtype in (torch.float64, torch.float32):
        compare_with_reference(run_chunk(cu_seqlens=cu_seqlens), x, dtype, reference=per_sequence_naive)


def test_split_sequence_with_carried_state_equals_whole():
    torch.manual_seed(0)
    x = make_inputs(B=2, T=150)
    o_whole, s_whole = run_chunk()(x)
    first = DSLAInputs(*(t[:, :70] for t in x.args()[:5]), x.mix, x.initial_state)
    o_a, s_a = run_chunk()(first)
    second = DSLAInputs(*(t[:, 70:] for t in x.args()[:5]), x.mix, s_a)
    o_b, s_b = run_chunk()(second)
    assert_close("o", torch.cat([o_a, o_b], dim=1), o_whole, 1e-12)
    assert_close("s1", s_b[0], s_whole[0], 1e-12)
    assert_close("s2", s_b[1], s_whole[1], 1e-12)


def test_low_precision_inputs_keep_fp32_states():
    torch.manual_seed(0)
    x = make_inputs(T=40)
    compare_with_reference(run_chunk(), x.to(torch.bfloat16).to(torch.float64), torch.bfloat16,
                           with_grads=False, tol=1e-2)


def test_without_final_state_and_contiguous_output():
    torch.manual_seed(0)
    x = make_inputs(T=70).to(torch.float32)
    o, state = chunk_dsla_torch(*x.args(), initial_state=x.initial_state)
    assert state is None and o.is_contiguous() and o.shape == (2, 70, 4, 6)
    _, (s1, s2) = chunk_dsla_torch(*x.args(), output_final_state=True)
    assert s1.is_contiguous() and s2.is_contiguous() and s1.shape == (2, 4, 8, 6)


def test_empty_sequence_returns_initial_state():
    torch.manual_seed(0)
    x = make_inputs(T=0)
    o, (s1, s2) = run_chunk()(x)
    assert o.shape == (2, 0, 4, 6)
    assert torch.equal(s1, x.initial_state[0]) and torch.equal(s2, x.initial_state[1])


def test_public_dispatch_uses_torch_backend_on_cpu():
    torch.manual_seed(0)
    x = make_inputs(T=30).to(torch.float32)
    o, s = chunk_dsla(*x.args(), initial_state=x.initial_state, output_final_state=True)
    o_t, s_t = chunk_dsla_torch(*x.args(), initial_state=x.initial_state, output_final_state=True)
    assert torch.equal(o, o_t) and torch.equal(s[0], s_t[0]) and torch.equal(s[1], s_t[1])


def test_packed_sequences_described_on_the_host_give_what_the_offsets_tensor_gives():
    torch.manual_seed(0)
    x = make_inputs(B=1, T=30).to(torch.float32)
    init = tuple(torch.cat([s, s]) for s in x.initial_state)  # two sequences
    o, s = chunk_dsla(*x.args(), initial_state=init, output_final_state=True, cu_seqlens=torch.tensor([0, 11, 30]))
    o_p, s_p = chunk_dsla(*x.args(), initial_state=init, output_final_state=True,
                          cu_seqlens=PackedSequences.of([0, 11, 30], "cpu"))
    assert torch.equal(o, o_p) and torch.equal(s[0], s_p[0]) and torch.equal(s[1], s_p[1])
    packed = PackedSequences.of((0, 11, 30), "cpu")
    assert packed.num_seqs == 2 and packed.cu_seqlens.tolist() == [0, 11, 30]
    with pytest.raises(ValueError, match="rise from 0 without decreasing"):
        PackedSequences.of([0, 12, 8], "cpu")


def test_the_dqkg_kernel_loops_over_v_at_least_twice():
    """A single iteration of the dq/dk/dg kernel's V loop miscompiled on sm_90 (triton 3.6; head dim 64:
    an illegal access, or wrong dg): its value tile is at most half the padded V, from 32 up."""
    import triton

    from dsla_serve.kernels.fused.chunk_bwd_dqkg import value_tile
    from dsla_serve.kernels.fused.common import pow2

    for v in (32, 48, 64, 80, 96, 128, 256):
        assert triton.cdiv(pow2(v), value_tile(v)) >= 2, v
    assert value_tile(64) == 32 and value_tile(128) == 64


def _bad(change):
    """Valid keyword arguments with the entries returned by change(inputs) replaced."""
    torch.manual_seed(0)
    x = make_inputs(B=1, T=8).to(torch.float32)
    kwargs = dict(q=x.q, k=x.k, v=x.v, g1=x.g1, g2=x.g2, mix=x.mix, initial_state=x.initial_state)
    kwargs.update(change(x))
    return kwargs


BAD_INPUTS = {
    "q 3-D": (lambda x: dict(q=x.q[0]), "q must be 4-D"),
    "g1 shape": (lambda x: dict(g1=x.g1[:, :4]), "g1 must have q's shape"),
    "heads not divisible": (lambda x: dict(k=x.k.repeat(1, 1, 3, 1)[:, :, :3], v=x.v.repeat(1, 1, 3, 1)[:, :, :3]),
                            r"multiple of key/value heads \(3\)"),
    "v length": (lambda x: dict(v=x.v[:, :5]), "v must be"),
    "mix shape": (lambda x: dict(mix=torch.ones(3, 2)), "mix must be a tensor of shape"),
    "positive g2": (lambda x: dict(g2=x.g2 + 1.0), "g2 holds log-decays"),
    "nan g1": (lambda x: dict(g1=torch.full_like(x.g1, float("nan"))), "g1 holds log-decays"),
    "state shape": (lambda x: dict(initial_state=(x.initial_state[0][:, :1], x.initial_state[1])),
                    r"initial_state\[0\] must be"),
    "state not a pair": (lambda x: dict(initial_state=x.initial_state[0]), "initial_state must be a pair"),
    "integer q": (lambda x: dict(q=x.q.long()), "q must be a floating-point tensor"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_rejects_bad_input(case):
    change, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        chunk_dsla_torch(**_bad(change))


def test_rejects_bad_varlen_and_chunk_size():
    torch.manual_seed(0)
    x = make_inputs(B=2, T=8).to(torch.float32)
    with pytest.raises(ValueError, match="batch size must be 1"):
        chunk_dsla_torch(*x.args(), cu_seqlens=torch.tensor([0, 8]))
    one = make_inputs(B=1, T=8, initial_state=False).to(torch.float32)
    with pytest.raises(ValueError, match="cu_seqlens must rise from 0 to T=8"):
        chunk_dsla_torch(*one.args(), cu_seqlens=torch.tensor([0, 5, 4, 8]))
    with pytest.raises(ValueError, match="int32/int64"):
        chunk_dsla_torch(*one.args(), cu_seqlens=torch.tensor([0.0, 8.0]))
    with pytest.raises(ValueError, match=r"initial_state\[0\] must be \[N=3"):  # states of 2, 3 sequences
        chunk_dsla_torch(*one.args(), initial_state=x.initial_state, cu_seqlens=torch.tensor([0, 3, 5, 8]))
    with pytest.raises(ValueError, match="chunk_size must be a positive multiple of 16"):
        chunk_dsla_torch(*one.args(), chunk_size=24)


def test_nan_poisoning_catches_an_unwritten_position():
    """The poisoned allocator works: a buffer with one position never written fails the check."""
    assert torch.isnan(torch.empty(3)).all() and torch.isnan(torch.zeros(2).new_empty(4)).all()
    assert torch.isnan(torch.empty_like(torch.zeros(2))).all()
    expected = torch.ones(2, 5)
    incomplete = torch.empty(2, 5)
    incomplete[:, :4] = 1.0
    with pytest.raises(AssertionError, match="relative RMS error nan"):
        assert_close("o", incomplete, expected, 1e-3)
    assert rel_rms(expected, expected) == 0.0
