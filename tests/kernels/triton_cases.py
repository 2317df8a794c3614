"""Cases of `test_triton.py`: the Triton DSLA kernels against `naive_dsla` under triton's interpreter.

Run only in a process started with TRITON_INTERPRET=1 (test_triton.py starts one; the file name keeps
pytest from collecting it in the normal run). Every comparison runs with
`torch.use_deterministic_algorithms(True)`, under which torch fills each new empty tensor with NaN:
an output element a kernel forgets to write shows up as NaN and fails.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from dsla_serve.kernels import PackedSequences
from dsla_serve.kernels.naive import naive_dsla

if os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("tests/kernels/triton_cases.py must run with TRITON_INTERPRET=1 (see test_triton.py)")


@pytest.fixture(scope="module")
def ops():
    from triton.runtime.interpreter import InterpretedFunction

    from dsla_serve.kernels import triton_ops
    from dsla_serve.kernels.fused import chunk_fwd, chunk_scores, recurrent

    assert isinstance(chunk_fwd._chunk_output_kernel, InterpretedFunction)
    assert isinstance(chunk_scores._chunk_scores_kernel, InterpretedFunction)
    assert isinstance(recurrent._recurrent_kernel, InterpretedFunction)
    return triton_ops


@pytest.fixture(autouse=True)
def nan_filled_empty_tensors():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    assert torch.utils.deterministic.fill_uninitialized_memory
    yield
    torch.use_deterministic_algorithms(before)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert not torch.isnan(a).any(), "NaN in the output: an element was left unwritten"
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(B, T, H, HK, K, V, dtype=torch.float32, strong=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    shift = -3.0 if strong else 2.0  # strong: per-token log-decays down to about -8
    xs = dict(
        q=r(B, T, H, K), k=r(B, T, HK, K), v=r(B, T, HK, V),
        g1=F.logsigmoid(r(B, T, H, K) + 3) / 4,
        g2=F.logsigmoid(r(B, T, H, K) + shift - 2),
        mix=torch.softmax(r(H, 2), -1),
    )
    return {n: x.to(dtype) if n != "mix" else x for n, x in xs.items()}


def f64(obj):
    """A float64 copy of a tensor, a tuple of tensors or a dict of tensors (the reference's precision)."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return {n: t.double() for n, t in obj.items()}
    if isinstance(obj, tuple):
        return tuple(t.double() for t in obj)
    return obj.double()


# fp32 kernels against the float64 reference: ~1e-6 typically; dg sums terms of opposite sign and
# loses a few more digits to cancellation.
TOL32 = 5e-5


def run_with_grads(fn, x, init, dout, dfinal, **kw):
    """Run fn, backprop <o, dout> + <final, dfinal>; returns outputs then input gradients."""
    leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
    init_leaves = tuple(s.clone().requires_grad_() for s in init) if init is not None else None
    o, (f1, f2) = fn(*leaves.values(), initial_state=init_leaves, output_final_state=True, **kw)
    loss = (o.float() * dout).sum()
    if dfinal is not None:
        loss = loss + (f1 * dfinal[0]).sum() + (f2 * dfinal[1]).sum()
    loss.backward()
    grads = {f"d{n}": t.grad for n, t in leaves.items()}
    if init_leaves is not None:
        grads.update(dinit1=init_leaves[0].grad, dinit2=init_leaves[1].grad)
    return dict(o=o, s1=f1, s2=f2, **grads)


@pytest.mark.parametrize(
    "T, H, HK, chunk, with_init, with_dfinal",
    [
        (40, 2, 2, 16, False, False),
        (130, 2, 2, 32, True, True),  # ragged last chunk, initial state, final-state gradient
        (77, 4, 2, 32, True, False),  # GQA: two query heads per key/value head
        (64, 2, 1, 64, False, True),  # GQA to a single kv head, one full chunk
    ],
)
def test_chunk_matches_naive_forward_states_and_gradients(ops, T, H, HK, chunk, with_init, with_dfinal):
    B, K, V = 2, 16, 16
    x = make_inputs(B, T, H, HK, K, V, seed=T)
    g = torch.Generator().manual_seed(1)
    init = (torch.randn(B, H, K, V, generator=g), torch.randn(B, H, K, V, generator=g)) if with_init else None
    dout = torch.randn(B, T, H, V, generator=g)
    dfinal = (torch.randn(B, H, K, V, generator=g), torch.randn(B, H, K, V, generator=g)) if with_dfinal else None

    got = run_with_grads(ops.chunk_dsla_triton, x, init, dout, dfinal, chunk_size=chunk)
    want = run_with_grads(naive_dsla, f64(x), f64(init), f64(dout), f64(dfinal))
    assert set(got) == set(want)
    for name in want:
        assert rel(got[name], want[name]) < TOL32, name


def test_chunk_with_several_key_and_value_tiles(ops):
    """Small launch tiles (16) against K=32, V=48: several key and value tiles, a ragged last one."""
    from dsla_serve.kernels.fused import chunk_bwd_dqkg, chunk_bwd_dv, chunk_bwd_intra, chunk_fwd, chunk_scores, states

    tiles = [(chunk_fwd.TUNING, dict(bk=16, bv=16)), (chunk_scores.TUNING, dict(bk=16)),
             (chunk_bwd_dv.TUNING, dict(bk=16, bv=16)), (chunk_bwd_intra.TUNING, dict(bk=16)),
             (chunk_bwd_dqkg.TUNING, dict(bk=16, bv=16)),
             (states.FORWARD_TUNING, dict(bk=16, bv=16)), (states.BACKWARD_TUNING, dict(bk=16, bv=16))]
    saved = [dict(table) for table, _ in tiles]
    B, T, H, HK, K, V = 1, 45, 2, 1, 32, 48
    x = make_inputs(B, T, H, HK, K, V, seed=9)
    g = torch.Generator().manual_seed(10)
    init = (torch.randn(B, H, K, V, generator=g), torch.randn(B, H, K, V, generator=g))
    dout = torch.randn(B, T, H, V, generator=g)
    dfinal = (torch.randn(B, H, K, V, generator=g), torch.randn(B, H, K, V, generator=g))
    try:
        for table, small in tiles:
            table.update(small)
        got = run_with_grads(ops.chunk_dsla_triton, x, init, dout, dfinal, chunk_size=32)
    finally:
        for (table, _), old in zip(tiles, saved):
            table.clear()
            table.update(old)
    want = run_with_grads(naive_dsla, f64(x), f64(init), f64(dout), f64(dfinal))
    for name in want:
        assert rel(got[name], want[name]) < TOL32, name


@pytest.mark.parametrize("T, chunk", [(48, 32), (100, 64)])
def test_chunk_handles_strong_decays_and_mix_of_shape_2(ops, T, chunk):
    """Per-token log-decays down to about -8 (decay 3e-4) stay finite and exact (the kernels' limit is
    about -11: exponents span up to 8 tokens of decay); mix [2] gets a [2] gradient. With 64-token
    chunks the score kernel also chains decays across the sub-chunks between a key and a query block."""
    B, H, K, V = 1, 2, 16, 16
    x = make_inputs(B, T, H, H, K, V, strong=True, seed=3)
    x["mix"] = torch.tensor([0.3, 0.7])
    assert -11 < x["g2"].min() < -7
    dout = torch.randn(B, T, H, V, generator=torch.Generator().manual_seed(2))
    got = run_with_grads(ops.chunk_dsla_triton, x, None, dout, None, chunk_size=chunk)
    want = run_with_grads(naive_dsla, f64(x), None, f64(dout), None)
    assert got["dmix"].shape == (2,)
    for name in want:
        assert rel(got[name], want[name]) < TOL32, name


def test_chunk_varlen_equals_each_sequence_alone(ops):
    """Packed sequences (one empty, one shorter than a chunk) restart their states at boundaries."""
    lengths = [37, 0, 9, 50]
    H, HK, K, V = 2, 1, 16, 16
    T = sum(lengths)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    x = make_inputs(1, T, H, HK, K, V, seed=5)
    g = torch.Generator().manual_seed(4)
    N = len(lengths)
    init = (torch.randn(N, H, K, V, generator=g), torch.randn(N, H, K, V, generator=g))
    dout = torch.randn(1, T, H, V, generator=g)
    dfinal = (torch.randn(N, H, K, V, generator=g), torch.randn(N, H, K, V, generator=g))
    got = run_with_grads(ops.chunk_dsla_triton, x, init, dout, dfinal, chunk_size=16, cu_seqlens=cu)
    packed = PackedSequences.of(cu.tolist(), "cpu")  # the offsets on the host: the same results
    for _ in range(2):
        again = run_with_grads(ops.chunk_dsla_triton, x, init, dout, dfinal, chunk_size=16, cu_seqlens=packed)
        assert all(torch.equal(again[name], got[name]) for name in got)
    assert list(packed.cache) == [("chunk layout", 16)]  # built once, kept for the next call

    for n in range(N):
        a, b = cu[n].item(), cu[n + 1].item()
        xs = {name: (t[:, a:b] if name != "mix" else t) for name, t in x.items()}
        one_init = (init[0][n:n + 1], init[1][n:n + 1])
        one_dfinal = (dfinal[0][n:n + 1], dfinal[1][n:n + 1])
        want = run_with_grads(naive_dsla, f64(xs), f64(one_init), f64(dout[:, a:b]), f64(one_dfinal))
        for name in ("s1", "s2", "dinit1", "dinit2"):
            assert rel(got[name][n:n + 1], want[name]) < TOL32, (n, name)
        if b > a:
            for name in ("o", "dq", "dk", "dv", "dg1", "dg2"):
                assert rel(got[name][:, a:b], want[name]) < TOL32, (n, name)


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
def test_chunk_low_precision_inputs(ops, dtype, tol):
    B, T, H, K, V = 1, 40, 2, 16, 16
    x = make_inputs(B, T, H, H, K, V, dtype=dtype, seed=7)
    dout = torch.randn(B, T, H, V, generator=torch.Generator().manual_seed(8))
    got = run_with_grads(ops.chunk_dsla_triton, x, None, dout, None, chunk_size=32)
    want = run_with_grads(naive_dsla, f64(x), None, f64(dout), None)
    assert got["o"].dtype == dtype and got["s1"].dtype == torch.float32
    for name in want:
        assert got[name].dtype == (torch.float32 if name in ("s1", "s2", "dmix", "mix") else dtype), name
        assert rel(got[name], want[name]) < tol, name


@pytest.mark.parametrize("varlen", [False, True])
def test_recurrent_matches_naive(ops, varlen):
    B, T, H, HK, K, V = 2, 23, 4, 2, 16, 32
    x = make_inputs(B, T, H, HK, K, V, seed=11)
    g = torch.Generator().manual_seed(12)
    init = (torch.randn(B, H, K, V, generator=g), torch.randn(B, H, K, V, generator=g))
    if not varlen:
        o, (s1, s2) = ops.recurrent_dsla_triton(*x.values(), initial_state=init, output_final_state=True)
        want_o, (w1, w2) = naive_dsla(*x.values(), initial_state=init, output_final_state=True)
    else:  # the two rows packed into one sequence axis
        packed = {n: (t.reshape(1, B * T, *t.shape[2:]) if n != "mix" else t) for n, t in x.items()}
        cu = torch.tensor([0, T, 2 * T], dtype=torch.int64)
        o, (s1, s2) = ops.recurrent_dsla_triton(*packed.values(), initial_state=init, output_final_state=True,
                                                cu_seqlens=cu)
        again = ops.recurrent_dsla_triton(*packed.values(), initial_state=init, output_final_state=True,
                                          cu_seqlens=PackedSequences.of(cu.tolist(), "cpu"))
        assert torch.equal(again[0], o) and all(torch.equal(a, b) for a, b in zip(again[1], (s1, s2)))
        o = o.view(B, T, H, V)
        want_o, (w1, w2) = naive_dsla(*x.values(), initial_state=init, output_final_state=True)
    assert rel(o, want_o) < 1e-5 and rel(s1, w1) < 1e-5 and rel(s2, w2) < 1e-5


def test_recurrent_with_autograd_uses_the_differentiable_path(ops):
    x = make_inputs(1, 20, 2, 2, 16, 16, seed=13)
    dout = torch.randn(1, 20, 2, 16)
    got = run_with_grads(ops.recurrent_dsla_triton, x, None, dout, None)
    want = run_with_grads(naive_dsla, f64(x), None, f64(dout), None)
    for name in want:
        assert rel(got[name], want[name]) < TOL32, name


def test_pool_step_updates_only_the_given_slots_in_place(ops):
    B, P, H, HK, K, V = 3, 6, 4, 2, 16, 32
    g = torch.Generator().manual_seed(21)
    pool = (torch.randn(P, H, K, V, generator=g), torch.randn(P, H, K, V, generator=g))
    before = tuple(s.clone() for s in pool)
    slots = torch.tensor([4, 0, 2])
    x = make_inputs(B, 1, H, HK, K, V, seed=22)
    ptrs = [s.data_ptr() for s in pool]

    o = ops.recurrent_dsla_pool_triton(*x.values(), pool, slots)

    want_o, (w1, w2) = naive_dsla(*x.values(), initial_state=(before[0][slots], before[1][slots]),
                                  output_final_state=True)
    assert [s.data_ptr() for s in pool] == ptrs
    assert rel(o, want_o) < 1e-5
    assert rel(pool[0][slots], w1) < 1e-5 and rel(pool[1][slots], w2) < 1e-5
    untouched = torch.tensor([1, 3, 5])
    assert torch.equal(pool[0][untouched], before[0][untouched])
    assert torch.equal(pool[1][untouched], before[1][untouched])


def test_bad_arguments_name_the_problem(ops):
    x = make_inputs(1, 16, 2, 2, 16, 16)
    with pytest.raises(TypeError, match="q is torch.float64"):
        ops.chunk_dsla_triton(*(t.double() for t in x.values()))
    with pytest.raises(ValueError, match="mix must be"):
        ops.chunk_dsla_triton(*list(x.values())[:5], torch.ones(3))
    with pytest.raises(ValueError, match="chunk_size"):
        ops.chunk_dsla_triton(*x.values(), chunk_size=24)
    with pytest.raises(ValueError, match=r"initial_state\[0\] must be"):
        ops.chunk_dsla_triton(*x.values(), initial_state=(torch.zeros(2, 2, 16, 16), torch.zeros(1, 2, 16, 16)))
    with pytest.raises(ValueError, match="T=1"):
        pool = (torch.zeros(2, 2, 16, 16), torch.zeros(2, 2, 16, 16))
        ops.recurrent_dsla_pool_triton(*x.values(), pool, torch.tensor([0]))


def logit_inputs(B, T, H, HK, K, V, dtype, seed):
    """q/k/v and gate logits as a DSLA layer makes them (history logits high, some past 15 where
    log1p(exp(-x)) needs care; recency logits lower)."""
    x = make_inputs(B, T, H, HK, K, V, dtype=dtype, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    x["g1"] = (torch.randn(B, T, H, K, generator=g) * 6 + 8).to(dtype)
    x["g2"] = (torch.randn(B, T, H, K, generator=g) * 2 - 1).to(dtype)
    return x


@pytest.mark.parametrize("dtype, tol", [(torch.float32, TOL32), (torch.bfloat16, 2e-2)])
def test_gate_logits_are_turned_into_log_decays_at_the_load(ops, dtype, tol):
    """gate_logit_normalizer: the kernels compute logsigmoid(x) / tau and return d/dx, as naive_dsla
    given the same logits (chunk with all gradients, recurrent, pool step)."""
    B, T, H, HK, K, V = 1, 70, 2, 1, 16, 16
    x = logit_inputs(B, T, H, HK, K, V, dtype, seed=31)
    assert x["g1"].float().max() > 15
    g = torch.Generator().manual_seed(32)
    init = (torch.randn(B, H, K, V, generator=g), torch.randn(B, H, K, V, generator=g))
    dout = torch.randn(B, T, H, V, generator=g)
    dfinal = (torch.randn(B, H, K, V, generator=g), torch.randn(B, H, K, V, generator=g))
    got = run_with_grads(ops.chunk_dsla_triton, x, init, dout, dfinal, chunk_size=64, gate_logit_normalizer=16.0)
    want = run_with_grads(naive_dsla, f64(x), f64(init), f64(dout), f64(dfinal), gate_logit_normalizer=16.0)
    for name in want:
        assert rel(got[name], want[name]) < tol, name
    assert got["dg1"].dtype == dtype

    with torch.no_grad():
        o, (s1, s2) = ops.recurrent_dsla_triton(*x.values(), initial_state=init, output_final_state=True,
                                                gate_logit_normalizer=16.0)
        pool = tuple(s.clone() for s in init)
        step = ops.recurrent_dsla_pool_triton(*(t[:, :1] if t.dim() == 4 else t for t in x.values()), pool,
                                              torch.tensor([0]), gate_logit_normalizer=16.0)
    wo, (w1, w2) = naive_dsla(*f64(x).values(), initial_state=f64(init), output_final_state=True,
                              gate_logit_normalizer=16.0)
    assert rel(o, wo) < tol and rel(s1, w1) < tol and rel(s2, w2) < tol
    assert rel(step, wo[:, :1]) < tol


def test_head_dim_64_with_the_default_launch_tiles(ops):
    """SmolLM2's head shape (head dim 64, three query heads per key/value head) at the launch settings
    in force: two K tiles and two V iterations in the dq/dk/dg kernel (`value_tile`), 64-token chunks
    with a ragged last one, gate logits, an initial state and a final-state gradient."""
    B, T, H, HK, K, V = 1, 100, 3, 1, 64, 64
    x = logit_inputs(B, T, H, HK, K, V, torch.float32, seed=41)
    g = torch.Generator().manual_seed(42)
    init = (torch.randn(B, H, K, V, generator=g), torch.randn(B, H, K, V, generator=g))
    dout = torch.randn(B, T, H, V, generator=g)
    dfinal = (torch.randn(B, H, K, V, generator=g), torch.randn(B, H, K, V, generator=g))
    got = run_with_grads(ops.chunk_dsla_triton, x, init, dout, dfinal, gate_logit_normalizer=16.0)
    want = run_with_grads(naive_dsla, f64(x), f64(init), f64(dout), f64(dfinal), gate_logit_normalizer=16.0)
    for name in want:
        assert rel(got[name], want[name]) < TOL32, name


def test_views_with_a_token_stride_are_read_in_place(ops):
    """q/k/v/g1/g2 as column views of one [B, T, width] projection output (the engine's merged GEMM):
    the same outputs and gradients as contiguous copies."""
    B, T, H, HK, K, V = 2, 50, 2, 1, 16, 16
    x = logit_inputs(B, T, H, HK, K, V, torch.float32, seed=41)
    names = ("q", "k", "v", "g1", "g2")
    merged = torch.cat([x[n].flatten(2) for n in names], dim=-1)  # [B, T, width]
    views, col = {}, 0
    for n in names:
        width = x[n].shape[2] * x[n].shape[3]
        views[n] = merged[..., col:col + width].unflatten(-1, x[n].shape[2:])
        col += width
    views["mix"] = x["mix"]
    assert not views["k"].is_contiguous()
    dout = torch.randn(B, T, H, V, generator=torch.Generator().manual_seed(42))
    got = run_with_grads(ops.chunk_dsla_triton, views, None, dout, None, gate_logit_normalizer=16.0)
    want = run_with_grads(ops.chunk_dsla_triton, x, None, dout, None, gate_logit_normalizer=16.0)
    for name in want:
        assert rel(got[name], want[name]) < 1e-6, name
    with torch.no_grad():
        o, _ = ops.recurrent_dsla_triton(*views.values(), gate_logit_normalizer=16.0)
    assert rel(o, want["o"]) < 1e-5


@pytest.mark.parametrize("gates", ["fp32 log-decays", "bf16 logits"])
def test_bf16_inputs_with_the_gates_the_model_passes(ops, gates):
    """bf16 q/k/v with fp32 log-decays (a DSLA layer's `project`) or bf16 gate logits (the engine),
    both through the three-piece decay sums; head dim 80 (not a power of two)."""
    B, T, H, HK, K, V = 1, 40, 2, 2, 80, 80
    x = logit_inputs(B, T, H, HK, K, V, torch.bfloat16, seed=51)
    kw = {}
    if gates == "fp32 log-decays":
        x["g1"], x["g2"] = (F.logsigmoid(x[n].float()) / 16 for n in ("g1", "g2"))
    else:
        kw = dict(gate_logit_normalizer=16.0)
    dout = torch.randn(B, T, H, V, generator=torch.Generator().manual_seed(52))
    got = run_with_grads(ops.chunk_dsla_triton, x, None, dout, None, chunk_size=32, **kw)
    want = run_with_grads(naive_dsla, f64(x), None, f64(dout), None, **kw)
    for name in want:
        assert rel(got[name], want[name]) < 2e-2, name


def test_reference_models_layer_inputs(ops):
    """SmolLM2-135M-Instruct's layer 3 converted to DSLA from its pretrained weights (GQA 9/3, head dim
    64, the gates as initialised): the q/k/v and gate logits `project` makes of the layer's real input on
    the chat prompt, in 16-token chunks (a ragged last one) from a random initial state, as the engine
    passes them (logits, `gate_logit_normalizer`). Forward, final states and every gradient against
    `naive_dsla` in fp64."""
    from dsla_serve.model import DSLAConfig, convert, dsla_layers
    from tests.reference import chat_ids, load_reference

    model, tokenizer = load_reference()
    convert(model, [3], DSLAConfig())
    layer, twin = model.model.layers[3], dsla_layers(model)[3]
    ids = torch.tensor([chat_ids(tokenizer)])
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[3]  # layer 3's input
        q, k, v, l1, l2 = twin.project(layer.input_layernorm(hidden), gate_logits=True)
        x = dict(q=q, k=k, v=v, g1=l1, g2=l2, mix=twin.readout_mix())
    B, T, H, K = q.shape
    assert (H, k.shape[2], K) == (9, 3, 64) and T % 16, (q.shape, k.shape)
    g = torch.Generator().manual_seed(43)
    init = (torch.randn(B, H, K, K, generator=g) * 0.1, torch.randn(B, H, K, K, generator=g) * 0.1)
    dout = torch.randn(B, T, H, K, generator=g)
    dfinal = (torch.randn(B, H, K, K, generator=g), torch.randn(B, H, K, K, generator=g))
    tau = twin.gate_logit_normalizer
    got = run_with_grads(ops.chunk_dsla_triton, x, init, dout, dfinal, chunk_size=16, gate_logit_normalizer=tau)
    want = run_with_grads(naive_dsla, f64(x), f64(init), f64(dout), f64(dfinal), gate_logit_normalizer=tau)
    for name in want:
        assert rel(got[name], want[name]) < TOL32, (name, rel(got[name], want[name]))
