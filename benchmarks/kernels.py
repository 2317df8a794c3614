"""GPU benchmark of the DSLA Triton kernels: correctness first, then one table of medians.

    python benchmarks/kernels.py [--out DIR] [--sweep [forward]] [--skip-fla] [--prefill-only]

1. Correctness (NaN-poisoned outputs: torch fills every new empty tensor with NaN while deterministic
   algorithms are on, so an unwritten element fails):
   - small shapes against `naive_dsla` in float64: fp32/bf16/fp16, GQA, packed sequences, initial
     states, final-state gradients; gate logits (`gate_logit_normalizer`), inputs with a token stride,
     head dims 80 and 96; the decode kernels; the PyTorch chunked form (the large-shape reference)
     itself; the fused block kernels and decode attention at head dims 80 and 96;
   - the benchmark shapes in bf16 against the PyTorch chunked form in fp32: outputs, final states and
     all gradients, relative RMS error < 1e-2, for bf16 log-decays and for the inputs a DSLA layer makes.
2. Timings (triton.testing.do_bench medians, L2 flushed before each run). The DSLA columns take their
   inputs from a real `DSLAAttention` of Llama-2-7B's layer shape (asserted: dtypes and strides are
   those the model passes): "engine" = the runner's `dsla_inputs` (one merged GEMM; q/k/v and bf16
   gate logits as column views), "train" = `project(x, gate_logits=True)` (the layer's forward),
   "fp32 g" = `project(x)` (fp32 log-decays); plus bf16 log-decays (random, as before). Against SDPA
   causal (flash) and flash-linear-attention's `chunk_gla` called twice. The gate cost of a whole layer
   (projection GEMM + kernel) for full-rank and low-rank gates; decode steps against
   `fused_recurrent_gla` twice, with state bandwidth as a fraction of the measured copy bandwidth; a B=1
   decode step replayed in a CUDA graph (a capture failure fails the run).
3. Each launch alone at T=32k (`kernel_breakdown`) with variants of the backward settings, and the
   compile report (registers, spills, shared memory) of every kernel compiled in the run.
   With --sweep (after the table): launch-setting variants of the forward and backward kernels.

Writes kernels.json (environment, checks, timings) under --out (default: $OUT or benchmarks/results).
Exits 1 when a check or a section failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

# run as a script, this folder comes first on sys.path, where this file would shadow the `kernels`
# package that transformers probes for: replace it by the repository root
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from dsla_serve.kernels.chunk import chunk_dsla_torch  # noqa: E402
from dsla_serve.kernels.fused import chunk as fused_chunk  # noqa: E402
from dsla_serve.kernels.fused import (  # noqa: E402
    chunk_bwd_dqkg, chunk_bwd_dv, chunk_bwd_intra, chunk_fwd, chunk_scores, decays, recurrent, states)
from dsla_serve.kernels.gates import log_decays  # noqa: E402
from dsla_serve.kernels.inputs import PackedSequences, cu_seqlens_tensor  # noqa: E402
from dsla_serve.kernels.naive import naive_dsla  # noqa: E402
from dsla_serve.kernels.recurrent import recurrent_dsla_pool_torch  # noqa: E402
from dsla_serve.kernels.triton_ops import (  # noqa: E402
    chunk_dsla_triton,
    recurrent_dsla_pool_triton,
    recurrent_dsla_triton,
)

DEVICE = "cuda"
H, D = 32, 128
PREFILL_SHAPES = [(1, 2048), (1, 8192), (1, 32768), (4, 8192)]
DECODE_BATCHES = [1, 16, 64, 256]
SMALL_SHAPE = (2, 200, 4, 2, 64, 64)  # B, T, H, HK, K, V of the checks against naive_dsla
BREAKDOWN_SHAPES = [(1, 32768), (4, 8192)]
SWEEP_SHAPES = [(1, 8192), (1, 32768)]  # backward variants at the first, forward at the last
GRAPH_LAYERS = 32
TOL = {torch.float32: 2e-3, torch.bfloat16: 1e-2, torch.float16: 5e-3}
GATE_RANKS = [None, 64, 256]  # layer-level gate cost: full rank, then low ranks
LAYER_TOKENS = [8192, 1]  # a prefill chunk of the engine, a decode step
TAU = 16.0
MODEL_FORM_CHECKS = [(1, 8192, "engine"), (1, 32768, "engine"), (4, 8192, "engine"), (1, 8192, "train"),
                     (1, 8192, "fp32 g")]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative RMS error ||a - b|| / ||b|| in float64; NaN (an unwritten output) gives inf."""
    a, b = a.detach().double(), b.detach().double()
    if not torch.isfinite(a).all():
        return math.inf
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@contextmanager
def nan_poisoned_allocations():
    """torch fills new empty tensors with NaN while deterministic algorithms are on."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


def make_inputs(B, T, Hq, Hk, K, V, dtype, seed=0):
    """DSLA-like inputs: unit-variance q/k/v, gates logsigmoid(.)/16 (history near 1, recency shorter)."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device=DEVICE)  # noqa: E731
    return dict(
        q=r(B, T, Hq, K).to(dtype), k=r(B, T, Hk, K).to(dtype), v=r(B, T, Hk, V).to(dtype),
        g1=(F.logsigmoid(r(B, T, Hq, K) + 3) / 16).to(dtype),
        g2=(F.logsigmoid(r(B, T, Hq, K) - 2) / 16).to(dtype),
        mix=torch.softmax(r(Hq, 2), -1),
    )


def dsla_layer(gate_rank=None, seed=0):
    """A DSLAAttention of Llama-2-7B's layer shape (hidden 4096, 32 heads of 128) in bf16 on the GPU,
    default DSLAConfig (full-rank gates unless `gate_rank`)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention

    from dsla_serve.model.attention import DSLAAttention
    from dsla_serve.model.config import DSLAConfig

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=H * D, num_attention_heads=H, num_key_value_heads=H, intermediate_size=11008)
    with torch.device(DEVICE):
        attn = LlamaAttention(config, layer_idx=0).to(torch.bfloat16)
        return DSLAAttention(attn, DSLAConfig(gate_rank=gate_rank))


def layer_inputs(twin, B, T, form, seed=0):
    """The kernel arguments a DSLA layer passes for random hidden states x [B, T, hidden].

    form "engine": the runner's `dsla_inputs` over one merged GEMM (column views, bf16 gate logits; the
    B rows packed as one sequence axis, their offsets a `PackedSequences` as the engine's ForwardBatch
    passes them); "train":
    `project(x, gate_logits=True)` (the layer's forward); "fp32 g": `project(x)` (fp32 log-decays).
    Returns (dict q, k, v, g1, g2, mix; keyword arguments of the op).
    """
    from dsla_serve.replicas.merged_weights import merge_linears
    from dsla_serve.replicas.runner import dsla_inputs

    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(B, T, twin.hidden_size, generator=gen, device=DEVICE, dtype=torch.bfloat16)
    kw = {}
    with torch.no_grad():
        if form == "engine":
            q, k, v, g1, g2 = dsla_inputs(twin, x.view(B * T, -1), merge_linears(twin.projection_linears()))
            assert not k.is_contiguous() and g1.dtype == torch.bfloat16 and q.shape == (1, B * T, H, D)
            kw["gate_logit_normalizer"] = twin.gate_logit_normalizer
            if B > 1:
                kw["cu_seqlens"] = PackedSequences.of(range(0, B * T + 1, T), DEVICE)
        elif form == "train":
            q, k, v, g1, g2 = twin.project(x, gate_logits=True)
            assert g1.dtype == torch.bfloat16 and q.is_contiguous()
            kw["gate_logit_normalizer"] = twin.gate_logit_normalizer
        else:
            q, k, v, g1, g2 = twin.project(x)
            assert g1.dtype == torch.float32 and q.dtype == torch.bfloat16
    return dict(q=q, k=k, v=v, g1=g1, g2=g2, mix=twin.readout_mix().detach()), kw


def forward_backward(fn, x, init, dout, dfinal, **kw):
    """fn's outputs, final states and the gradients of <o, dout> + <final, dfinal> w.r.t. every input."""
    leaves = {n: t.detach().clone().requires_grad_() for n, t in x.items()}
    init_l = tuple(s.detach().clone().requires_grad_() for s in init) if init is not None else None
    o, (s1, s2) = fn(*leaves.values(), initial_state=init_l, output_final_state=True, **kw)
    wrt = list(leaves.values()) + (list(init_l) if init_l else [])
    grads = torch.autograd.grad([o, s1, s2], wrt, [dout.to(o.dtype), dfinal[0], dfinal[1]])
    names = [f"d{n}" for n in leaves] + (["dinit1", "dinit2"] if init_l else [])
    out = dict(o=o.detach(), s1=s1.detach(), s2=s2.detach())
    out.update(zip(names, grads))
    return out


def compare(got: dict, want: dict) -> dict:
    return {name: rel(got[name], want[name]) for name in want}


# ---------------------------------------------------------------------------------------------------
# 1. correctness


def check_small_shapes() -> list[dict]:
    """Small shapes against naive_dsla in float64 on the GPU."""
    rows = []
    B, T, Hq, Hk, K, V = SMALL_SHAPE
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = make_inputs(B, T, Hq, Hk, K, V, dtype, seed=1)
        g = torch.Generator(device=DEVICE).manual_seed(2)
        init = (torch.randn(B, Hq, K, V, generator=g, device=DEVICE),
                torch.randn(B, Hq, K, V, generator=g, device=DEVICE))
        dout = torch.randn(B, T, Hq, V, generator=g, device=DEVICE).to(dtype).float()
        dfin = (torch.randn(B, Hq, K, V, generator=g, device=DEVICE),
                torch.randn(B, Hq, K, V, generator=g, device=DEVICE))
        x64 = {n: t.double() for n, t in x.items()}
        want = forward_backward(naive_dsla, x64, tuple(s.double() for s in init), dout.double(),
                                tuple(s.double() for s in dfin))
        with nan_poisoned_allocations():
            got = forward_backward(chunk_dsla_triton, x, init, dout, dfin, chunk_size=64)
        rows.append(dict(check="chunk vs naive fp64 (GQA, init, dfinal)", dtype=str(dtype), errors=compare(got, want),
                         tol=TOL[dtype]))

        # packed sequences: the two rows as one sequence axis with cu_seqlens, plus a short third
        lengths = [T, 37, T]
        xp = make_inputs(1, sum(lengths), Hq, Hk, K, V, dtype, seed=3)
        cu = torch.tensor([0, T, T + 37, 2 * T + 37], device=DEVICE, dtype=torch.int32)
        dp = torch.randn(1, sum(lengths), Hq, V, generator=g, device=DEVICE).to(dtype).float()
        with nan_poisoned_allocations():
            got = forward_backward(chunk_dsla_triton, xp, None, dp, tuple(torch.zeros(3, Hq, K, V, device=DEVICE)
                                                                          for _ in range(2)), cu_seqlens=cu)
        errs = {}
        for n in range(3):
            a, b = cu[n].item(), cu[n + 1].item()
            xs = {nm: (t[:, a:b].double() if nm != "mix" else t.double()) for nm, t in xp.items()}
            zero = tuple(torch.zeros(1, Hq, K, V, device=DEVICE, dtype=torch.float64) for _ in range(2))
            ref = forward_backward(naive_dsla, xs, None, dp[:, a:b].double(), zero)
            for name in ("o", "dq", "dk", "dv", "dg1", "dg2"):
                errs[name] = max(errs.get(name, 0.0), rel(got[name][:, a:b], ref[name]))
            for name in ("s1", "s2"):
                errs[name] = max(errs.get(name, 0.0), rel(got[name][n:n + 1], ref[name]))
        rows.append(dict(check="chunk varlen vs naive fp64 (3 seqs)", dtype=str(dtype), errors=errs, tol=TOL[dtype]))

        with torch.no_grad(), nan_poisoned_allocations():
            o, (s1, s2) = recurrent_dsla_triton(*x.values(), initial_state=init, output_final_state=True)
        ro, (r1, r2) = naive_dsla(*x64.values(), initial_state=tuple(s.double() for s in init),
                                  output_final_state=True)
        rows.append(dict(check="recurrent vs naive fp64", dtype=str(dtype),
                         errors=dict(o=rel(o, ro), s1=rel(s1, r1), s2=rel(s2, r2)), tol=TOL[dtype]))

        P = 5
        pool = tuple(torch.randn(P, Hq, K, V, generator=g, device=DEVICE) for _ in range(2))
        before = tuple(s.clone() for s in pool)
        slots = torch.tensor([3, 0], device=DEVICE)
        xs = make_inputs(B, 1, Hq, Hk, K, V, dtype, seed=4)
        with torch.no_grad(), nan_poisoned_allocations():
            o = recurrent_dsla_pool_triton(*xs.values(), pool, slots)
        ro, (r1, r2) = naive_dsla(*(t.double() for t in xs.values()),
                                  initial_state=(before[0][slots].double(), before[1][slots].double()),
                                  output_final_state=True)
        others = torch.tensor([1, 2, 4], device=DEVICE)
        untouched = float(torch.equal(pool[0][others], before[0][others]) and torch.equal(pool[1][others], before[1][others]))
        rows.append(dict(check="pool step vs naive fp64 (other rows untouched)", dtype=str(dtype),
                         errors=dict(o=rel(o, ro), s1=rel(pool[0][slots], r1), s2=rel(pool[1][slots], r2),
                                     untouched_rows_changed=1.0 - untouched), tol=TOL[dtype]))

    # the large-shape reference (PyTorch chunked form, fp32) against naive fp64
    x = make_inputs(B, T, Hq, Hk, K, V, torch.float32, seed=5)
    dout = torch.randn(B, T, Hq, V, device=DEVICE)
    dfin = tuple(torch.randn(B, Hq, K, V, device=DEVICE) for _ in range(2))
    want = forward_backward(naive_dsla, {n: t.double() for n, t in x.items()}, None, dout.double(),
                            tuple(s.double() for s in dfin))
    got = forward_backward(chunk_dsla_torch, x, None, dout, dfin)
    rows.append(dict(check="reference chunk_dsla_torch fp32 vs naive fp64", dtype="torch.float32",
                     errors=compare(got, want), tol=1e-3))
    return rows


def logit_inputs(B, T, Hq, Hk, K, V, dtype, seed):
    """make_inputs with gate logits instead of log-decays (history high, some past 15; recency lower)."""
    x = make_inputs(B, T, Hq, Hk, K, V, dtype, seed=seed)
    g = torch.Generator(device=DEVICE).manual_seed(seed + 100)
    x["g1"] = (torch.randn(B, T, Hq, K, generator=g, device=DEVICE) * 6 + 8).to(dtype)
    x["g2"] = (torch.randn(B, T, Hq, K, generator=g, device=DEVICE) * 2 - 1).to(dtype)
    return x


def column_views(x: dict) -> dict:
    """q/k/v/g1/g2 as column views of one [B, T, width] tensor (the engine's merged projection output)."""
    names = ("q", "k", "v", "g1", "g2")
    merged = torch.cat([x[n].flatten(2) for n in names], dim=-1)
    out, col = {}, 0
    for n in names:
        width = x[n].shape[2] * x[n].shape[3]
        out[n] = merged[..., col:col + width].unflatten(-1, x[n].shape[2:])
        col += width
    out["mix"] = x["mix"]
    return out


def check_gate_forms_small() -> list[dict]:
    """Gate logits, inputs read through a token stride and head dims 80/96 against naive_dsla in fp64."""
    rows = []
    B, T, Hq, Hk, K, V = SMALL_SHAPE
    g = torch.Generator(device=DEVICE).manual_seed(42)
    for dtype in (torch.float32, torch.bfloat16):
        x = logit_inputs(B, T, Hq, Hk, K, V, dtype, seed=41)
        init = tuple(torch.randn(B, Hq, K, V, generator=g, device=DEVICE) for _ in range(2))
        dout = torch.randn(B, T, Hq, V, generator=g, device=DEVICE).to(dtype).float()
        dfin = tuple(torch.randn(B, Hq, K, V, generator=g, device=DEVICE) for _ in range(2))
        x64 = {n: t.double() for n, t in x.items()}
        want = forward_backward(naive_dsla, x64, tuple(s.double() for s in init), dout.double(),
                                tuple(s.double() for s in dfin), gate_logit_normalizer=TAU)
        with nan_poisoned_allocations():
            got = forward_backward(chunk_dsla_triton, x, init, dout, dfin, gate_logit_normalizer=TAU)
        rows.append(dict(check="chunk, gate logits vs naive fp64 (GQA, init, dfinal)", dtype=str(dtype),
                         errors=compare(got, want), tol=TOL[dtype]))
        views = column_views(x)
        with torch.no_grad(), nan_poisoned_allocations():
            o, (s1, s2) = chunk_dsla_triton(*views.values(), initial_state=init, output_final_state=True,
                                            gate_logit_normalizer=TAU)
            ro, (r1, r2) = recurrent_dsla_triton(*views.values(), initial_state=init, output_final_state=True,
                                                 gate_logit_normalizer=TAU)
            pool = tuple(s.clone() for s in init)
            po = recurrent_dsla_pool_triton(*(t[:, :1] for t in list(views.values())[:5]), views["mix"], pool,
                                            torch.arange(B, device=DEVICE), gate_logit_normalizer=TAU)
        wo1, (w1, w2) = naive_dsla(*(t[:, :1] for t in list(x64.values())[:5]), x64["mix"],
                                   initial_state=tuple(s.double() for s in init), output_final_state=True,
                                   gate_logit_normalizer=TAU)
        rows.append(dict(check="column views, gate logits: chunk / recurrent / pool step vs naive fp64",
                         dtype=str(dtype), tol=TOL[dtype],
                         errors=dict(o=rel(o, want["o"]), s1=rel(s1, want["s1"]), s2=rel(s2, want["s2"]),
                                     o_recurrent=rel(ro, want["o"]), s1_recurrent=rel(r1, want["s1"]),
                                     o_pool=rel(po, wo1), s1_pool=rel(pool[0], w1), s2_pool=rel(pool[1], w2))))
    for Kd in (80, 96):  # head dims that are not a power of two
        x = make_inputs(1, 150, 2, 2, Kd, Kd, torch.bfloat16, seed=Kd)
        x["g1"], x["g2"] = x["g1"].float(), x["g2"].float()  # bf16 q/k/v with fp32 log-decays
        dout = torch.randn(1, 150, 2, Kd, generator=g, device=DEVICE).bfloat16().float()
        dfin = tuple(torch.zeros(1, 2, Kd, Kd, device=DEVICE) for _ in range(2))
        want = forward_backward(naive_dsla, {n: t.double() for n, t in x.items()}, None, dout.double(),
                                tuple(s.double() for s in dfin))
        with nan_poisoned_allocations():
            got = forward_backward(chunk_dsla_triton, x, None, dout, dfin)
        rows.append(dict(check=f"chunk, head dim {Kd}, fp32 log-decays vs naive fp64", dtype="torch.bfloat16",
                         errors=compare(got, want), tol=TOL[torch.bfloat16]))
    return rows


def check_blocks() -> list[dict]:
    """The fused block kernels and the decode attention against their PyTorch forms at head dims
    64 / 80 / 96 (bf16; the decode attention in fp32 too)."""
    from dsla_serve.kernels.attention import decode_attention_torch
    from dsla_serve.kernels.attention.decode_triton import decode_attention_triton
    from dsla_serve.kernels.block import add_rmsnorm, rope_kv_write, silu_mul

    rows = []
    g = torch.Generator(device=DEVICE).manual_seed(61)
    r = lambda *shape, dtype=torch.bfloat16: torch.randn(*shape, generator=g, device=DEVICE).to(dtype)  # noqa: E731
    for Dh in (64, 80, 96):
        N, Hq, Hk, P, L = 7, 8, 2, 3, 300
        q, k, v, cos, sin = r(N, Hq, Dh), r(N, Hk, Dh), r(N, Hk, Dh), r(N, Dh), r(N, Dh)
        kc, vc = torch.full((2, P, Hk, L, Dh), float("nan"), device=DEVICE, dtype=torch.bfloat16)
        slots = torch.tensor([2, 0, 2, 1, 0, 1, 2], device=DEVICE)
        pos = torch.tensor([0, 3, 1, 9, 4, 7, 299], device=DEVICE)
        half = Dh // 2
        rot = lambda t: t * cos[:, None] + torch.cat((-t[..., half:], t[..., :half]), -1) * sin[:, None]  # noqa: E731
        ref_q, ref_kc, ref_vc = rot(q), kc.clone(), vc.clone()
        ref_kc[slots, :, pos], ref_vc[slots, :, pos] = rot(k), v
        rope_kv_write(q, k, v, cos, sin, kc, vc, slots, pos)
        errors = dict(rope_q=rel(q, ref_q), k_cache=rel(kc.nan_to_num(7.0), ref_kc.nan_to_num(7.0)),
                      v_cache=rel(vc.nan_to_num(7.0), ref_vc.nan_to_num(7.0)))
        for dtype in (torch.bfloat16, torch.float32):
            kcache, vcache = r(P, Hk, L, Dh, dtype=dtype), r(P, Hk, L, Dh, dtype=dtype)
            qd = r(3, Hq, Dh, dtype=dtype)
            sl, ln = torch.tensor([1, 0, 2], device=DEVICE), torch.tensor([1, 150, 300], device=DEVICE)
            want = decode_attention_torch(qd.double(), kcache.double(), vcache.double(), sl, ln, Dh**-0.5, L)
            errors[f"decode_attention_{str(dtype)[6:]}"] = rel(
                decode_attention_triton(qd, kcache, vcache, sl, ln, Dh**-0.5, L), want)
        h, a, w = r(N, Hq * Dh), r(N, Hq * Dh), r(Hq * Dh)
        h2, y = add_rmsnorm(h, a, w, 1e-5)
        s = (h + a).float()
        errors["add_rmsnorm"] = rel(y, (w.float() * (s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-5))
                                        .bfloat16().float()))
        errors["silu_mul"] = rel(silu_mul(h, a), F.silu(h) * a)
        rows.append(dict(check=f"block kernels and decode attention, head dim {Dh}", dtype="torch.bfloat16",
                         errors=errors, tol=1e-2))
    return rows


def check_model_forms() -> list[dict]:
    """A DSLA layer's own inputs at the benchmark shapes against the PyTorch form in fp32: the engine's
    (column views, bf16 logits) forward at T=8k and 32k, the layer forward's with gradients at 8k."""
    rows = []
    twin = dsla_layer()
    for B, T, form in MODEL_FORM_CHECKS:
        x, kw = layer_inputs(twin, B, T, form, seed=T)
        ref_x = dict(x)
        ref_x["g1"], ref_x["g2"] = log_decays(x["g1"], x["g2"], kw.get("gate_logit_normalizer"))
        ref_x = {n: t.float() for n, t in ref_x.items()}
        g = torch.Generator(device=DEVICE).manual_seed(8)
        dout = torch.randn(B, T, H, D, generator=g, device=DEVICE).bfloat16().float()
        dfin = tuple(torch.randn(B, H, D, D, generator=g, device=DEVICE) * 0.01 for _ in range(2))
        if form == "engine":
            with torch.no_grad():
                with nan_poisoned_allocations():
                    o, (s1, s2) = chunk_dsla_triton(*x.values(), output_final_state=True, **kw)
                ro, (r1, r2) = chunk_dsla_torch(*ref_x.values(), output_final_state=True,
                                                cu_seqlens=cu_seqlens_tensor(kw.get("cu_seqlens")))
            errors = dict(o=rel(o, ro), s1=rel(s1, r1), s2=rel(s2, r2))
        else:
            with nan_poisoned_allocations():
                got = forward_backward(chunk_dsla_triton, x, None, dout, dfin, **kw)
            # the reference differentiates through the fp32 log-decays of the same logits
            leaves = {n: t.detach().clone().requires_grad_() for n, t in x.items()}
            lg = {n: (t.float() if n not in ("g1", "g2") else t) for n, t in leaves.items()}
            lg["g1"], lg["g2"] = log_decays(leaves["g1"], leaves["g2"], kw.get("gate_logit_normalizer"))
            o, (s1, s2) = chunk_dsla_torch(*lg.values(), output_final_state=True)
            grads = torch.autograd.grad([o, s1, s2], list(leaves.values()), [dout, dfin[0], dfin[1]])
            want = dict(o=o.detach(), s1=s1.detach(), s2=s2.detach(), **{f"d{n}": gr for n, gr in zip(leaves, grads)})
            errors = compare(got, want)
        rows.append(dict(check=f"DSLA layer inputs '{form}' vs torch fp32, B={B} T={T}", dtype="torch.bfloat16",
                         errors=errors, tol=1e-2))
        log(f"  checked '{form}' B={B} T={T}: worst {max(errors.values()):.2e}")
        del x, ref_x
        torch.cuda.empty_cache()
    return rows


def check_benchmark_shapes() -> list[dict]:
    """bf16 kernels at the benchmark shapes against the PyTorch chunked form in fp32."""
    rows = []
    for B, T in PREFILL_SHAPES:
        x = make_inputs(B, T, H, H, D, D, torch.bfloat16, seed=T + B)
        g = torch.Generator(device=DEVICE).manual_seed(7)
        init = tuple(torch.randn(B, H, D, D, generator=g, device=DEVICE) * 0.1 for _ in range(2))
        dout = torch.randn(B, T, H, D, generator=g, device=DEVICE).bfloat16().float()
        dfin = tuple(torch.randn(B, H, D, D, generator=g, device=DEVICE) * 0.01 for _ in range(2))
        with nan_poisoned_allocations():
            got = forward_backward(chunk_dsla_triton, x, init, dout, dfin)
        want = forward_backward(chunk_dsla_torch, {n: t.float() for n, t in x.items()}, init, dout, dfin)
        rows.append(dict(check=f"chunk bf16 vs torch fp32, B={B} T={T}", dtype="torch.bfloat16",
                         errors=compare(got, want), tol=1e-2))
        del got, want
        torch.cuda.empty_cache()
        log(f"  checked B={B} T={T}: worst {max(rows[-1]['errors'].values()):.2e}")
    for B in DECODE_BATCHES:
        x = make_inputs(B, 1, H, H, D, D, torch.bfloat16, seed=B)
        pool = tuple(torch.randn(2 * B, H, D, D, device=DEVICE) * 0.1 for _ in range(2))
        ref_pool = tuple(s.clone() for s in pool)
        slots = torch.randperm(2 * B, device=DEVICE)[:B]
        with torch.no_grad():
            with nan_poisoned_allocations():
                o = recurrent_dsla_pool_triton(*x.values(), pool, slots)
            ro = recurrent_dsla_pool_torch(*(t.float() for t in x.values()), ref_pool, slots)
        rows.append(dict(check=f"pool step bf16 vs torch fp32, B={B}", dtype="torch.bfloat16",
                         errors=dict(o=rel(o, ro), s1=rel(pool[0], ref_pool[0]), s2=rel(pool[1], ref_pool[1])),
                         tol=1e-2))
    return rows


# ---------------------------------------------------------------------------------------------------
# 2. timings


def bench(fn, rep_ms: float = 200) -> float:
    """Median milliseconds (do_bench flushes L2 before each run)."""
    import triton

    return triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median")


def timed(row: dict, key: str, fn, rep_ms: float = 200) -> None:
    """row[key] = bench(fn), logged at once with the wall time it took (compiles and autotuning
    included), so a run stopped by its time limit still shows what it measured and what was slow."""
    t0 = time.time()
    row[key] = bench(fn, rep_ms)
    log(f"    B={row['B']} T={row['T']} {key}: {row[key]:.3f} ms ({time.time() - t0:.0f} s wall)")


def measure_ceilings() -> dict:
    src = torch.randn(2**28, device=DEVICE)  # 1 GiB
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src))
    copy_bw = 2 * src.numel() * 4 / (t * 1e-3)
    a = torch.randn(8192, 8192, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=DEVICE, dtype=torch.bfloat16)
    tm = bench(lambda: a @ b)
    del src, dst, a, b
    torch.cuda.empty_cache()
    return dict(copy_bandwidth_Bps=copy_bw, bf16_matmul_flops=2 * 8192**3 / (tm * 1e-3))


def prefill_floor(B, T, ceilings) -> dict:
    """Fewest bytes (q, k, v, g1, g2 read once in bf16, o written once) and the kernels' matmul flops."""
    token_heads = B * T * H
    nbytes = token_heads * (5 * D + D) * 2
    # per token-head: per state, chunk state update + in-chunk state update + state read-out (2KV each)
    # and the 16-wide diagonal score block (2*16*K); plus the mixed score block times v (2*16*V)
    flops = token_heads * (2 * (3 * 2 * D * D + 2 * 16 * D) + 2 * 16 * D)
    t_bytes = nbytes / ceilings["copy_bandwidth_Bps"] * 1e3
    t_flops = flops / ceilings["bf16_matmul_flops"] * 1e3
    return dict(bytes=nbytes, flops=flops, ms_bytes=t_bytes, ms_flops=t_flops, floor_ms=max(t_bytes, t_flops))


def time_prefill(skip_fla: bool) -> list[dict]:
    """Per shape: DSLA forward with the engine's, the layer's (fp32 log-decays) and random bf16
    log-decay inputs; forward+backward with the layer forward's and fp32 log-decay inputs; SDPA; GLA x2."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from dsla_serve.kernels import chunk_dsla

    rows = []
    fla = None if skip_fla else import_fla()
    twin = dsla_layer()
    for B, T in PREFILL_SHAPES:
        x = make_inputs(B, T, H, H, D, D, torch.bfloat16, seed=11)
        dout = torch.randn(B, T, H, D, device=DEVICE, dtype=torch.bfloat16)
        row = dict(B=B, T=T)
        timed(row, "dsla_bf16g_fwd_ms", lambda: chunk_dsla(*x.values(), output_final_state=True))
        for form, key in (("engine", "engine"), ("fp32 g", "fp32g")):
            ins, kw = layer_inputs(twin, B, T, form)
            if form == "engine":  # the runner's call: initial states gathered from the pool, final states back
                kw["initial_state"] = tuple(torch.zeros(B, H, D, D, device=DEVICE) for _ in range(2))
            with torch.no_grad():
                timed(row, f"dsla_{key}_fwd_ms", lambda: chunk_dsla(*ins.values(), output_final_state=True, **kw))
                if "cu_seqlens" in kw:  # the offsets as a device tensor instead: read back on every call
                    tensor_kw = {**kw, "cu_seqlens": kw["cu_seqlens"].cu_seqlens}
                    timed(row, f"dsla_{key}_offsets_tensor_fwd_ms",
                          lambda: chunk_dsla(*ins.values(), output_final_state=True, **tensor_kw))
            del ins
        for form, key in (("train", "train"), ("fp32 g", "fp32g")):
            ins, kw = layer_inputs(twin, B, T, form)
            leaves = {n: t.detach().requires_grad_() for n, t in ins.items()}

            def fwd_bwd():
                o, _ = chunk_dsla(*leaves.values(), **kw)
                return torch.autograd.grad(o, list(leaves.values()), dout)

            timed(row, f"dsla_{key}_fwd_bwd_ms", fwd_bwd, rep_ms=400)
            del ins, leaves
            torch.cuda.empty_cache()

        qt, kt, vt = (x[n].transpose(1, 2) for n in ("q", "k", "v"))
        qg, kg, vg = (t.detach().requires_grad_() for t in (qt, kt, vt))
        dt = dout.transpose(1, 2)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            timed(row, "sdpa_fwd_ms", lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True))
            timed(row, "sdpa_fwd_bwd_ms", lambda: torch.autograd.grad(
                F.scaled_dot_product_attention(qg, kg, vg, is_causal=True), [qg, kg, vg], dt), rep_ms=600)

        if fla is not None:
            chunk_gla = fla["chunk_gla"]
            leaves = {n: t.detach().requires_grad_() for n, t in x.items()}

            def gla_twice():
                chunk_gla(x["q"], x["k"], x["v"], x["g1"], output_final_state=True)
                return chunk_gla(x["q"], x["k"], x["v"], x["g2"], output_final_state=True)

            def gla_twice_fwd_bwd():
                ins = [leaves[n] for n in ("q", "k", "v", "g1", "g2")]
                o1, _ = chunk_gla(ins[0], ins[1], ins[2], ins[3], output_final_state=True)
                o2, _ = chunk_gla(ins[0], ins[1], ins[2], ins[4], output_final_state=True)
                return torch.autograd.grad([o1, o2], ins, [dout, dout])

            timed(row, "gla2_fwd_ms", gla_twice)
            timed(row, "gla2_fwd_bwd_ms", gla_twice_fwd_bwd, rep_ms=400)
            del leaves
        rows.append(row)
        log(f"  prefill B={B} T={T}: " + ", ".join(f"{k}={v:.3f}" for k, v in row.items() if k.endswith("ms")))
        del x
        torch.cuda.empty_cache()
    return rows


def time_layer_gates() -> list[dict]:
    """A DSLA layer's projection and kernel, as the engine runs them, for full-rank and low-rank gates:
    a prefill chunk (8192 tokens: merged GEMM + chunk kernel) and a decode step (one token: merged GEMV +
    pool kernel), beside q/k/v alone (a softmax layer's projection)."""
    from dsla_serve.kernels import chunk_dsla
    from dsla_serve.kernels.dispatch import recurrent_dsla_pool
    from dsla_serve.replicas.merged_weights import merge_linears
    from dsla_serve.replicas.runner import dsla_inputs

    rows = []
    for rank in GATE_RANKS:
        twin = dsla_layer(rank)
        merged = merge_linears(twin.projection_linears())
        qkv = merge_linears([twin.q_proj, twin.k_proj, twin.v_proj])
        mix, tau = twin.readout_mix().detach(), twin.gate_logit_normalizer
        gate_params = sum(p.numel() for g in twin.gates() for p in g.parameters())
        for N in LAYER_TOKENS:
            x = torch.randn(N, twin.hidden_size, device=DEVICE, dtype=torch.bfloat16)
            pool = tuple(torch.zeros(4, H, D, D, device=DEVICE) for _ in range(2))
            slots = torch.zeros(1, dtype=torch.int64, device=DEVICE)
            with torch.no_grad():
                if N > 1:
                    def layer():
                        q, k, v, g1, g2 = dsla_inputs(twin, x, merged)
                        return chunk_dsla(q, k, v, g1, g2, mix, initial_state=(pool[0][:1], pool[1][:1]),
                                          output_final_state=True, gate_logit_normalizer=tau)
                else:
                    def layer():
                        q, k, v, g1, g2 = (t[0, :, None] for t in dsla_inputs(twin, x, merged))
                        return recurrent_dsla_pool(q, k, v, g1, g2, mix, pool, slots, gate_logit_normalizer=tau)
                row = dict(gate_rank=rank, tokens=N, gate_params_M=gate_params / 1e6,
                           qkv_gemm_ms=bench(lambda: F.linear(x, *qkv)),
                           projection_ms=bench(lambda: dsla_inputs(twin, x, merged)),
                           layer_ms=bench(layer))
            rows.append(row)
            log(f"  layer gates: {row}")
        del twin, merged, qkv
        torch.cuda.empty_cache()
    return rows


BREAKDOWN_VARIANTS = [  # settings of the backward kernels timed beside the defaults (breakdown at B=1)
    ("bwd_intra bk32 w2", "chunk_bwd_intra.TUNING", dict(bk=32, num_warps=2)),
    ("bwd_dv bk64 bv128", "chunk_bwd_dv.TUNING", dict(bk=64, bv=128)),
    ("bwd_dqkg w8", "chunk_bwd_dqkg.TUNING", dict(num_warps=8)),
]


def kernel_breakdown() -> list[dict]:
    """Each launch of the forward and backward alone, with the engine's inputs (bf16 gate logits read
    through the merged projection's stride) at B=1 T=32k and B=4 T=8k; at B=1 also launch-setting
    variants of the backward kernels (each checked against the default's result)."""
    from dsla_serve.kernels.fused.checks import mix_table
    from dsla_serve.kernels.fused.common import Gates, dot_dtype, flat_tokens
    from dsla_serve.kernels.fused.layout import ChunkLayout

    rows = []
    twin = dsla_layer()
    for B, T in BREAKDOWN_SHAPES:
        x, kw = layer_inputs(twin, 1, B * T, "engine", seed=12)  # B=4: four rows of one sequence axis
        q, k, v, g1, g2 = (flat_tokens(x[n]) for n in ("q", "k", "v", "g1", "g2"))
        mix = mix_table(x["mix"], H)
        gates = Gates.of(g1, kw["gate_logit_normalizer"])
        cu = torch.arange(0, B * T + 1, T, device=DEVICE, dtype=torch.int32) if B > 1 else None
        do = torch.randn(B * T, H, D, device=DEVICE, dtype=torch.bfloat16)
        layout = ChunkLayout.build(1, B * T, fused_chunk.DEFAULT_CHUNK_SIZE, cu)
        dt = dot_dtype(q)
        scale = D**-0.5
        b1, b2 = decays.chunk_decays(g1, g2, gates, layout)
        h1, h2, _ = states.forward_states(k, v, b1, b2, layout, None, True, dt)
        dh1, dh2, _ = states.backward_states(q, b1, b2, do, mix, scale, layout, None, False, dt)
        A = chunk_scores.chunk_scores(q, k, b1, b2, mix, scale, layout, dt)
        dA, _ = chunk_bwd_dv.chunk_dv(k, v, b1, b2, do, A, dh1, dh2, layout, torch.bfloat16)
        parts = chunk_bwd_intra.chunk_dqk_intra(q, k, b1, b2, mix, dA, scale, layout)[:4]
        launches = {
            "chunk_decays": lambda: decays.chunk_decays(g1, g2, gates, layout),
            "forward_states": lambda: states.forward_states(k, v, b1, b2, layout, None, True, dt),
            "chunk_scores": lambda: chunk_scores.chunk_scores(q, k, b1, b2, mix, scale, layout, dt),
            "chunk_output": lambda: chunk_fwd.chunk_output(q, v, b1, b2, mix, h1, h2, A, scale, layout,
                                                           torch.bfloat16),
            "backward_states": lambda: states.backward_states(q, b1, b2, do, mix, scale, layout, None, False, dt),
            "bwd_dv": lambda: chunk_bwd_dv.chunk_dv(k, v, b1, b2, do, A, dh1, dh2, layout, torch.bfloat16),
            "bwd_intra": lambda: chunk_bwd_intra.chunk_dqk_intra(q, k, b1, b2, mix, dA, scale, layout),
            "bwd_dqkg": lambda: chunk_bwd_dqkg.chunk_dqkg(q, k, v, b1, b2, g1, g2, gates, do, mix, h1, h2, dh1, dh2,
                                                         *parts, scale, layout, torch.bfloat16),
        }
        row = dict(B=B, T=T)
        for name, fn in launches.items():
            row[f"{name}_ms"] = bench(fn)
        if B == 1:
            for variant, table, changes in BREAKDOWN_VARIANTS:
                name = variant.split()[0]
                base = launches[name]()
                with settings({table: changes}):
                    try:
                        got = launches[name]()
                        pairs = zip(got, base) if isinstance(got, tuple) else [(got, base)]
                        err = max(rel(a, b) for a, b in pairs if isinstance(a, torch.Tensor))
                        row[f"variant {variant}_ms"] = bench(launches[name])
                        row[f"variant {variant}_rel"] = err
                    except Exception as e:  # noqa: BLE001 - a variant may not compile
                        row[f"variant {variant}_error"] = repr(e)[:200]
        rows.append(row)
        log(f"  breakdown B={B} T={T}: " + ", ".join(f"{k}={v:.3f}" for k, v in row.items()
                                                      if isinstance(v, float)))
        del x, q, k, v, g1, g2, b1, b2, h1, h2, dh1, dh2, A, dA, parts
        torch.cuda.empty_cache()
    return rows


def time_decode(skip_fla: bool, ceilings: dict) -> list[dict]:
    rows = []
    fla = None if skip_fla else import_fla()
    for B in DECODE_BATCHES:
        x = make_inputs(B, 1, H, H, D, D, torch.bfloat16, seed=B)
        pool = tuple(torch.randn(B, H, D, D, device=DEVICE) * 0.1 for _ in range(2))
        slots = torch.randperm(B, device=DEVICE)
        state_bytes = 2 * 2 * B * H * D * D * 4  # two fp32 states, read and written
        row = dict(B=B, state_MB=state_bytes / 1e6)
        with torch.no_grad():
            t = bench(lambda: recurrent_dsla_pool_triton(*x.values(), pool, slots))
            row["dsla_step_us"] = t * 1e3
            row["dsla_bw_frac"] = state_bytes / (t * 1e-3) / ceilings["copy_bandwidth_Bps"]
            if fla is not None:
                frg = fla["fused_recurrent_gla"]
                s1, s2 = (s.clone() for s in pool)

                def gla_twice():
                    frg(x["q"], x["k"], x["v"], gk=x["g1"], initial_state=s1, output_final_state=True)
                    return frg(x["q"], x["k"], x["v"], gk=x["g2"], initial_state=s2, output_final_state=True)

                t2 = bench(gla_twice)
                row["gla2_step_us"] = t2 * 1e3
                row["gla2_bw_frac"] = state_bytes / (t2 * 1e-3) / ceilings["copy_bandwidth_Bps"]
        row["floor_us"] = state_bytes / ceilings["copy_bandwidth_Bps"] * 1e6
        rows.append(row)
        log(f"  decode B={B}: " + ", ".join(f"{k}={v:.3f}" for k, v in row.items()))
    return rows


def time_decode_graph() -> dict:
    """B=1 decode of GRAPH_LAYERS layers (each its own pool) captured in one CUDA graph."""
    x = make_inputs(1, 1, H, H, D, D, torch.bfloat16, seed=21)
    pools = [tuple(torch.randn(1, H, D, D, device=DEVICE) * 0.1 for _ in range(2)) for _ in range(GRAPH_LAYERS)]
    slots = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    check_pool = tuple(s.clone() for s in pools[0])
    with torch.no_grad():
        eager_o = recurrent_dsla_pool_triton(*x.values(), check_pool, slots)  # also compiles
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                recurrent_dsla_pool_triton(*x.values(), tuple(s.clone() for s in pools[0]), slots)
        torch.cuda.current_stream().wait_stream(side)
        start = [tuple(s.clone() for s in p) for p in pools]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = [recurrent_dsla_pool_triton(*x.values(), p, slots) for p in pools]
        for p, s in zip(pools, start):
            for dst, src in zip(p, s):
                dst.copy_(src)
        graph.replay()
        torch.cuda.synchronize()
        err = max(rel(outs[0], eager_o), rel(pools[0][0], check_pool[0]), rel(pools[0][1], check_pool[1]))
        t = bench(graph.replay)
        t_eager = bench(lambda: recurrent_dsla_pool_triton(*x.values(), pools[0], slots))
    return dict(layers=GRAPH_LAYERS, graph_us_per_layer_step=t * 1e3 / GRAPH_LAYERS, graph_replay_us=t * 1e3,
                eager_single_step_us=t_eager * 1e3, graph_vs_eager_rel_err=err)


def import_fla():
    try:
        import fla
        from fla.ops.gla import chunk_gla, fused_recurrent_gla
        return dict(chunk_gla=chunk_gla, fused_recurrent_gla=fused_recurrent_gla, version=fla.__version__)
    except Exception as e:  # noqa: BLE001 - the comparison is optional
        log(f"flash-linear-attention unavailable: {e!r}")
        return None


# ---------------------------------------------------------------------------------------------------
# 3. launch-setting sweep


TABLES = {"decays.TUNING": decays.TUNING, "states.FORWARD_TUNING": states.FORWARD_TUNING, "chunk_scores.TUNING": chunk_scores.TUNING,
          "chunk_fwd.TUNING": chunk_fwd.TUNING, "states.BACKWARD_TUNING": states.BACKWARD_TUNING,
          "chunk_bwd_dv.TUNING": chunk_bwd_dv.TUNING, "chunk_bwd_intra.TUNING": chunk_bwd_intra.TUNING,
          "chunk_bwd_dqkg.TUNING": chunk_bwd_dqkg.TUNING}
FORWARD_VARIANTS = [
    ("default", {}),
    ("scores bk64 w1", {"chunk_scores.TUNING": dict(bk=64)}),
    ("scores bk32 w2", {"chunk_scores.TUNING": dict(num_warps=2)}),
    ("scores bk32 w4", {"chunk_scores.TUNING": dict(num_warps=4)}),
    ("out bk32", {"chunk_fwd.TUNING": dict(bk=32)}),
    ("out bv64", {"chunk_fwd.TUNING": dict(bv=64)}),
    ("out bk32 bv64 stages3", {"chunk_fwd.TUNING": dict(bk=32, bv=64, num_stages=3)}),
    ("states bv32", {"states.FORWARD_TUNING": dict(bv=32)}),
    ("states bk64 bv32", {"states.FORWARD_TUNING": dict(bk=64, bv=32)}),
    ("states bk64 bv64 w8", {"states.FORWARD_TUNING": dict(bk=64, num_warps=8)}),
    ("states stages3", {"states.FORWARD_TUNING": dict(num_stages=3)}),
    ("decays bk32", {"decays.TUNING": dict(bk=32)}),
    ("decays bk128 w8", {"decays.TUNING": dict(bk=128, num_warps=8)}),
    ("decays w2", {"decays.TUNING": dict(num_warps=2)}),
]
BACKWARD_VARIANTS = [
    ("default", {}),
    ("intra bk32 w2", {"chunk_bwd_intra.TUNING": dict(bk=32, num_warps=2)}),
    ("dqkg bv32", {"chunk_bwd_dqkg.TUNING": dict(bv=32)}),
    ("bwd-states bv32", {"states.BACKWARD_TUNING": dict(bv=32)}),
]


@contextmanager
def settings(changes: dict):
    """Temporarily update the kernels' launch-setting tables, e.g. {"chunk_fwd.TUNING": {"bv": 128}}."""
    saved = {name: dict(TABLES[name]) for name in changes}
    for name, values in changes.items():
        TABLES[name].update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            TABLES[name].clear()
            TABLES[name].update(old)


def sweep(backward: bool = True) -> list[dict]:
    """Time launch-setting variants of the forward (at the longest sweep shape) and the backward."""
    rows = []
    B, T = SWEEP_SHAPES[-1]
    x = make_inputs(B, T, H, H, D, D, torch.bfloat16, seed=31)
    base = chunk_dsla_triton(*x.values())[0]
    for name, changes in FORWARD_VARIANTS:
        with settings(changes):
            try:
                err = rel(chunk_dsla_triton(*x.values())[0], base)
                t = bench(lambda: chunk_dsla_triton(*x.values(), output_final_state=True))
                rows.append(dict(part="forward", variant=name, settings=changes, B=B, T=T, ms=t, rel_vs_default=err))
            except Exception as e:  # noqa: BLE001
                rows.append(dict(part="forward", variant=name, settings=changes, B=B, T=T, error=repr(e)[:300]))
        log(f"  sweep {rows[-1]}")
    if not backward:
        return rows
    B, T = SWEEP_SHAPES[0]
    x = make_inputs(B, T, H, H, D, D, torch.bfloat16, seed=32)
    leaves = {n: t.detach().requires_grad_() for n, t in x.items()}
    dout = torch.randn(B, T, H, D, device=DEVICE, dtype=torch.bfloat16)

    def fwd_bwd():
        o, _ = chunk_dsla_triton(*leaves.values(), output_final_state=True)
        return torch.autograd.grad(o, list(leaves.values()), dout)

    base_grads = fwd_bwd()
    for name, changes in BACKWARD_VARIANTS:
        with settings(changes):
            try:
                err = max(rel(a, b) for a, b in zip(fwd_bwd(), base_grads))
                t = bench(fwd_bwd, rep_ms=400)
                rows.append(dict(part="fwd+bwd", variant=name, settings=changes, B=B, T=T, ms=t, rel_vs_default=err))
            except Exception as e:  # noqa: BLE001
                rows.append(dict(part="fwd+bwd", variant=name, settings=changes, B=B, T=T, error=repr(e)[:300]))
        log(f"  sweep {rows[-1]}")
    return rows


def compile_report() -> list[dict]:
    """Registers, spills, shared memory and warps of every compiled variant of the forward kernels."""
    rows = []
    kernels = {"chunk_decays": decays._chunk_decays_kernel,
               "forward_states": states._forward_states_kernel,
               "chunk_scores": chunk_scores._chunk_scores_kernel,
               "chunk_output": chunk_fwd._chunk_output_kernel,
               "backward_states": states._backward_states_kernel,
               "bwd_dv": chunk_bwd_dv._dv_kernel,
               "bwd_intra": chunk_bwd_intra._dqk_intra_kernel,
               "bwd_dqkg": chunk_bwd_dqkg._dqkg_kernel,
               "recurrent": recurrent._recurrent_kernel}
    for name, fn in kernels.items():
        for entry in list(getattr(fn, "device_caches", {}).values()):
            caches = [e for e in (entry if isinstance(entry, tuple) else (entry,)) if isinstance(e, dict)]
            for key, kern in (caches[0].items() if caches else []):
                try:
                    kern._init_handles()
                except Exception:  # noqa: BLE001 - already initialised, or another triton version
                    pass
                md = kern.metadata
                rows.append(dict(kernel=name, num_warps=md.num_warps, num_stages=md.num_stages, shared=md.shared,
                                 n_regs=getattr(kern, "n_regs", None), n_spills=getattr(kern, "n_spills", None),
                                 key=str(key)[-160:]))
    return rows


# ---------------------------------------------------------------------------------------------------


def environment() -> dict:
    import triton

    props = torch.cuda.get_device_properties(0)
    fla = import_fla()
    return dict(device=props.name, sms=props.multi_processor_count, memory_GB=props.total_memory / 1e9,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                torch=torch.__version__, triton=triton.__version__, fla=fla["version"] if fla else None,
                python=platform.python_version(), cuda=torch.version.cuda)


CHECKS = ("correctness_small", "correctness_gate_forms", "correctness_blocks", "correctness_benchmark",
          "correctness_model_forms")


def print_table(res: dict) -> None:  # noqa: C901 - one flat report
    ceil = res.get("ceilings", {})
    lines = []
    lines.append(f"DSLA Triton kernels on {res['env']['device']} ({res['env']['date']}); torch {res['env']['torch']}, "
                 f"triton {res['env']['triton']}, fla {res['env']['fla']}; H={H}, D={D}, bf16; medians")
    if ceil:
        lines.append(f"measured copy bandwidth {ceil['copy_bandwidth_Bps'] / 1e12:.2f} TB/s (read+write), "
                     f"bf16 matmul {ceil['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s")
    checks = [c for name in CHECKS for c in res.get(name, [])]
    if checks:
        worst = max((max(c["errors"].values()) / c["tol"], c["check"], c["dtype"]) for c in checks)
        failed = [c for c in checks if max(c["errors"].values()) >= c["tol"]]
        lines.append(f"correctness: {len(checks) - len(failed)}/{len(checks)} checks pass "
                     f"(worst error/tolerance {worst[0]:.2f} in '{worst[1]}' {worst[2]})")
        for c in failed:
            lines.append(f"  FAIL {c['check']} {c['dtype']}: " + ", ".join(f"{k}={v:.2e}" for k, v in c["errors"].items()))
    pre = res.get("prefill", [])
    if pre:
        nan = float("nan")
        lines.append("")
        lines.append("prefill forward (ms): DSLA with the engine's inputs (bf16 gate logits, merged-GEMM views), the "
                     "layer's fp32 log-decays, bf16 log-decays; SDPA; GLA x2")
        lines.append(f"{'shape':<12}{'floor':>8}{'engine':>9}{'fp32 g':>9}{'bf16 g':>9}{'SDPA':>9}{'GLA x2':>9}"
                     f"{'GLA2/eng':>10}{'SDPA/eng':>10}")
        for r in pre:
            e, g = r["dsla_engine_fwd_ms"], r.get("gla2_fwd_ms", nan)
            lines.append(f"B={r['B']} T={r['T'] // 1024}k".ljust(12) + f"{r['floor']['floor_ms']:>8.3f}{e:>9.3f}"
                         f"{r['dsla_fp32g_fwd_ms']:>9.3f}{r['dsla_bf16g_fwd_ms']:>9.3f}{r['sdpa_fwd_ms']:>9.3f}"
                         f"{g:>9.3f}{g / e:>9.2f}x{r['sdpa_fwd_ms'] / e:>9.2f}x")
        lines.append("prefill forward+backward (ms): DSLA with the layer forward's inputs (bf16 gate logits) and "
                     "with fp32 log-decays; SDPA; GLA x2")
        lines.append(f"{'shape':<12}{'train':>9}{'fp32 g':>9}{'SDPA':>9}{'GLA x2':>9}{'GLA2/train':>11}{'SDPA/train':>11}")
        for r in pre:
            t, g = r["dsla_train_fwd_bwd_ms"], r.get("gla2_fwd_bwd_ms", nan)
            lines.append(f"B={r['B']} T={r['T'] // 1024}k".ljust(12) + f"{t:>9.3f}{r['dsla_fp32g_fwd_bwd_ms']:>9.3f}"
                         f"{r['sdpa_fwd_bwd_ms']:>9.3f}{g:>9.3f}{g / t:>10.2f}x{r['sdpa_fwd_bwd_ms'] / t:>10.2f}x")
        lines.append("(floor = fewest bytes over copy bandwidth vs kernel flops over matmul rate, the larger)")
    lay = res.get("layer_gates", [])
    if lay:
        lines.append("")
        lines.append("DSLA layer as the engine runs it (ms): q/k/v GEMM alone, merged projection (q/k/v + gates), "
                     "projection + kernel")
        for r in lay:
            lines.append(f"  gates {('rank ' + str(r['gate_rank'])) if r['gate_rank'] else 'full rank':<10} "
                         f"({r['gate_params_M']:.2f}M params) tokens {r['tokens']:>5}: qkv {r['qkv_gemm_ms']:.3f}, "
                         f"projection {r['projection_ms']:.3f}, layer {r['layer_ms']:.3f}")
    dec = res.get("decode", [])
    if dec:
        lines.append("")
        lines.append(f"{'decode step':<12}{'state MB':>9}{'floor us':>10}{'DSLA us':>9}{'BW frac':>9}"
                     f"{'GLA x2 us':>11}{'BW frac':>9}{'speedup':>9}")
        for r in dec:
            g = r.get("gla2_step_us", float("nan"))
            lines.append(f"B={r['B']}".ljust(12) + f"{r['state_MB']:>9.1f}{r['floor_us']:>10.1f}{r['dsla_step_us']:>9.1f}"
                         + f"{r['dsla_bw_frac']:>9.2f}{g:>11.1f}{r.get('gla2_bw_frac', float('nan')):>9.2f}"
                         + f"{g / r['dsla_step_us']:>8.2f}x")
    br = res.get("kernel_breakdown", [])
    if br:
        lines.append("")
        for r in br:
            lines.append(f"per launch (ms) B={r['B']} T={r['T'] // 1024}k: "
                         + ", ".join(f"{k[:-3]} {v:.3f}" for k, v in r.items() if k.endswith("_ms")
                                     and not k.startswith("variant")))
            for k, v in r.items():
                if k.startswith("variant") and k.endswith(("_ms", "_error")):
                    lines.append(f"  {k}: {v if isinstance(v, str) else round(v, 3)}"
                                 + (f" (rel. difference {r[k[:-3] + '_rel']:.1e})" if k.endswith("_ms") else ""))
    gr = res.get("decode_graph")
    if gr and "graph_us_per_layer_step" in gr:
        lines.append(f"decode B=1 in a CUDA graph of {gr['layers']} layer-steps: {gr['graph_us_per_layer_step']:.1f} us "
                     f"per layer-step (eager single step {gr['eager_single_step_us']:.1f} us; graph vs eager "
                     f"error {gr['graph_vs_eager_rel_err']:.1e})")
    for r in res.get("compile_report", []):
        lines.append(f"  compiled {r['kernel']:<18} warps {r['num_warps']} stages {r['num_stages']} regs {r['n_regs']} "
                     f"spills {r['n_spills']} shared {r['shared']}")
    sw = res.get("sweep", [])
    if sw:
        lines.append("")
        lines.append("launch-setting sweep (ms; rel = difference from the default settings' result):")
        for r in sw:
            shown = f"{r['ms']:.3f}" if "ms" in r else r.get("error", "?")[:80]
            lines.append(f"  {r['part']:<8} {r['variant']:<18} B={r['B']} T={r['T']:<6} {shown}  "
                         f"{('rel=%.1e' % r['rel_vs_default']) if 'rel_vs_default' in r else ''}")
    print("\n".join(lines), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results"),
                    help="folder for kernels.json (default: $OUT, else benchmarks/results)")
    ap.add_argument("--sweep", nargs="?", const="all", choices=["all", "forward"],
                    help="afterwards, time launch-setting variants (of the forward only with 'forward')")
    ap.add_argument("--sweep-deadline", type=float, default=300.0,
                    help="skip the sweep if the rest took longer than this many seconds")
    ap.add_argument("--skip-fla", action="store_true", help="do not compare with flash-linear-attention")
    ap.add_argument("--prefill-only", action="store_true", help="leave out the decode timings")
    default_shapes = ",".join(f"{b}x{t}" for b, t in PREFILL_SHAPES)
    ap.add_argument("--prefill-shapes", default=None, help=f"BxT,... of the prefill timings (default {default_shapes})")
    ap.add_argument("--no-small-checks", action="store_true",
                    help="skip the small-shape checks against naive_dsla (keep those at the benchmark shapes)")
    args = ap.parse_args(argv)
    if args.prefill_shapes:
        PREFILL_SHAPES[:] = [tuple(int(n) for n in shape.split("x")) for shape in args.prefill_shapes.split(",")]
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py needs a CUDA GPU", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    res: dict = dict(env=environment(), errors={})
    log(f"environment: {res['env']}")

    def save():
        (out / "kernels.json").write_text(json.dumps(res, indent=1, default=str))

    def section(name, fn):
        t0 = time.time()
        log(f"{name} ...")
        try:
            res[name] = fn()
        except Exception:  # noqa: BLE001 - keep the other sections' results
            res["errors"][name] = traceback.format_exc()
            log(f"{name} FAILED:\n{res['errors'][name]}")
        log(f"{name} done in {time.time() - t0:.1f}s")
        save()

    # the measurements the issue asks for first (the JSON is written after every section)
    section("ceilings", measure_ceilings)
    section("correctness_model_forms", check_model_forms)
    res["tuning_used"] = {name: dict(table) for name, table in TABLES.items()}
    section("prefill", lambda: time_prefill(args.skip_fla))
    if "prefill" in res and "ceilings" in res:
        for r in res["prefill"]:
            r["floor"] = prefill_floor(r["B"], r["T"], res["ceilings"])
    section("layer_gates", time_layer_gates)
    section("kernel_breakdown", kernel_breakdown)
    section("compile_report", compile_report)
    if not args.no_small_checks:
        section("correctness_small", check_small_shapes)
        section("correctness_gate_forms", check_gate_forms_small)
        section("correctness_blocks", check_blocks)
    section("correctness_benchmark", check_benchmark_shapes)
    if not args.prefill_only:
        section("decode", lambda: time_decode(args.skip_fla, res["ceilings"]))
        section("decode_graph", time_decode_graph)
    section("compile_report", compile_report)  # again, with every kernel the checks compiled
    print_table(res)
    if args.sweep:  # last, so that a failing variant cannot cost the table above
        if time.time() - started < args.sweep_deadline:
            section("sweep", lambda: sweep(backward=args.sweep == "all"))
            section("compile_report", compile_report)
            print_table(res)
        else:
            log(f"sweep skipped: {time.time() - started:.0f}s already spent (--sweep-deadline {args.sweep_deadline:.0f})")
    checks = [c for name in CHECKS for c in res.get(name, [])]
    ok = checks and all(max(c["errors"].values()) < c["tol"] for c in checks) and not res["errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
