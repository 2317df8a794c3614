"""GPU benchmark of the DSLA Triton kernels: correctness first, then one table of medians.

    python benchmarks/kernels.py [--out DIR] [--sweep [forward]] [--skip-fla] [--prefill-only]

1. Correctness (NaN-poisoned outputs: torch fills every new empty tensor with NaN while deterministic
   algorithms are on, so an unwritten element fails):
   - small shapes against `naive_dsla` in float64: fp32/bf16/fp16, GQA, packed sequences, initial
     states, final-state gradients; the decode kernels; the PyTorch chunked form (the large-shape
     reference) itself;
   - the benchmark shapes in bf16 against the PyTorch chunked form in fp32: outputs, final states and
     all gradients, relative RMS error < 1e-2.
2. Timings (triton.testing.do_bench medians, L2 flushed before each run): prefill forward and
   forward+backward against SDPA causal (flash) and flash-linear-attention's `chunk_gla` called
   twice; decode steps against `fused_recurrent_gla` called twice, with state bandwidth as a fraction
   of the measured copy bandwidth; a B=1 decode step replayed in a CUDA graph.
3. With --sweep (after the table): launch-setting variants of the forward and backward kernels (only
   the forward with `--sweep forward`), each checked against the default settings' result. The
   settings in force are recorded as "tuning_used". --prefill-only leaves out the decode timings.

Writes kernels.json (environment, checks, timings) under --out (default: $OUT or benchmarks/results).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsla_serve.kernels.chunk import chunk_dsla_torch  # noqa: E402
from dsla_serve.kernels.fused import chunk as fused_chunk  # noqa: E402
from dsla_serve.kernels.fused import chunk_bwd, chunk_fwd, chunk_scores, recurrent, states  # noqa: E402
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
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []
    fla = None if skip_fla else import_fla()
    for B, T in PREFILL_SHAPES:
        x = make_inputs(B, T, H, H, D, D, torch.bfloat16, seed=11)
        leaves = {n: t.detach().requires_grad_() for n, t in x.items()}
        dout = torch.randn(B, T, H, D, device=DEVICE, dtype=torch.bfloat16)
        row = dict(B=B, T=T)

        def dsla_fwd():
            return chunk_dsla_triton(*x.values(), output_final_state=True)

        def dsla_fwd_bwd():
            o, _ = chunk_dsla_triton(*leaves.values(), output_final_state=True)
            return torch.autograd.grad(o, list(leaves.values()), dout)

        row["dsla_fwd_ms"] = bench(dsla_fwd)
        row["dsla_fwd_bwd_ms"] = bench(dsla_fwd_bwd, rep_ms=400)

        qt, kt, vt = (x[n].transpose(1, 2) for n in ("q", "k", "v"))
        qg, kg, vg = (t.detach().requires_grad_() for t in (qt, kt, vt))
        dt = dout.transpose(1, 2)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            row["sdpa_fwd_ms"] = bench(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True))
            row["sdpa_fwd_bwd_ms"] = bench(lambda: torch.autograd.grad(
                F.scaled_dot_product_attention(qg, kg, vg, is_causal=True), [qg, kg, vg], dt), rep_ms=600)

        if fla is not None:
            chunk_gla = fla["chunk_gla"]

            def gla_twice():
                chunk_gla(x["q"], x["k"], x["v"], x["g1"], output_final_state=True)
                return chunk_gla(x["q"], x["k"], x["v"], x["g2"], output_final_state=True)

            def gla_twice_fwd_bwd():
                ins = [leaves[n] for n in ("q", "k", "v", "g1", "g2")]
                o1, _ = chunk_gla(ins[0], ins[1], ins[2], ins[3], output_final_state=True)
                o2, _ = chunk_gla(ins[0], ins[1], ins[2], ins[4], output_final_state=True)
                return torch.autograd.grad([o1, o2], ins, [dout, dout])

            row["gla2_fwd_ms"] = bench(gla_twice)
            row["gla2_fwd_bwd_ms"] = bench(gla_twice_fwd_bwd, rep_ms=400)
        rows.append(row)
        log(f"  prefill B={B} T={T}: " + ", ".join(f"{k}={v:.3f}" for k, v in row.items() if k.endswith("ms")))
        del x, leaves
        torch.cuda.empty_cache()
    return rows


def kernel_breakdown() -> list[dict]:
    """Each launch of the forward and backward alone, at the two largest shapes."""
    from dsla_serve.kernels.fused.checks import mix_table
    from dsla_serve.kernels.fused.common import dot_dtype
    from dsla_serve.kernels.fused.layout import ChunkLayout

    rows = []
    for B, T in BREAKDOWN_SHAPES:
        x = make_inputs(B, T, H, H, D, D, torch.bfloat16, seed=12)
        flat = {n: (t.view(B * T, H, D) if n != "mix" else mix_table(t, H)) for n, t in x.items()}
        do = torch.randn(B * T, H, D, device=DEVICE, dtype=torch.bfloat16)
        layout = ChunkLayout.build(B, T, fused_chunk.DEFAULT_CHUNK_SIZE, None)
        dt = dot_dtype(x["q"])
        scale = D**-0.5
        q, k, v, g1, g2, mix = flat.values()
        h1, h2, _ = states.forward_states(k, v, g1, g2, layout, H, None, True, dt)
        dh1, dh2, _ = states.backward_states(q, g1, g2, do, mix, scale, layout, None, False, dt)
        row = dict(B=B, T=T)
        A = chunk_scores.chunk_scores(q, k, g1, g2, mix, scale, layout, dt)
        row["forward_states_ms"] = bench(lambda: states.forward_states(k, v, g1, g2, layout, H, None, True, dt))
        row["chunk_scores_ms"] = bench(lambda: chunk_scores.chunk_scores(q, k, g1, g2, mix, scale, layout, dt))
        row["chunk_output_ms"] = bench(lambda: chunk_fwd.chunk_output(q, v, g1, g2, mix, h1, h2, A, scale,
                                                                      layout, torch.bfloat16))
        row["backward_states_ms"] = bench(lambda: states.backward_states(q, g1, g2, do, mix, scale, layout,
                                                                         None, False, dt))
        row["dq_dk_dv_ms"] = bench(lambda: chunk_bwd.chunk_backward(q, k, v, g1, g2, do, mix, h1, h2, dh1, dh2,
                                                                    scale, layout))
        rows.append(row)
        log(f"  breakdown B={B} T={T}: " + ", ".join(f"{k}={v:.3f}" for k, v in row.items() if k.endswith("ms")))
        del x, flat, h1, h2, dh1, dh2, A
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


TABLES = {"states.FORWARD_TUNING": states.FORWARD_TUNING, "chunk_scores.TUNING": chunk_scores.TUNING,
          "chunk_fwd.TUNING": chunk_fwd.TUNING,
          "states.BACKWARD_TUNING": states.BACKWARD_TUNING, "chunk_bwd.TUNING": chunk_bwd.TUNING}
FORWARD_VARIANTS = [
    ("default", {}),
    ("scores bk64 w1", {"chunk_scores.TUNING": dict(bk=64)}),
    ("scores bk32 w2", {"chunk_scores.TUNING": dict(num_warps=2)}),
    ("scores bk32 w4", {"chunk_scores.TUNING": dict(num_warps=4)}),
    ("out bk32", {"chunk_fwd.TUNING": dict(bk=32)}),
]
BACKWARD_VARIANTS = [
    ("default", {}),
    ("bwd w4", {"chunk_bwd.TUNING": dict(num_warps=4)}),
    ("bwd bk16 bv16", {"chunk_bwd.TUNING": dict(bk=16, bv=16)}),
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
    kernels = {"forward_states": states._forward_states_kernel,
               "chunk_scores": chunk_scores._chunk_scores_kernel,
               "chunk_output": chunk_fwd._chunk_output_kernel}
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


def print_table(res: dict) -> None:  # noqa: C901 - one flat report
    ceil = res.get("ceilings", {})
    lines = []
    lines.append(f"DSLA Triton kernels on {res['env']['device']} ({res['env']['date']}); torch {res['env']['torch']}, "
                 f"triton {res['env']['triton']}, fla {res['env']['fla']}; H={H}, D={D}, bf16; medians")
    if ceil:
        lines.append(f"measured copy bandwidth {ceil['copy_bandwidth_Bps'] / 1e12:.2f} TB/s (read+write), "
                     f"bf16 matmul {ceil['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s")
    checks = res.get("correctness_small", []) + res.get("correctness_benchmark", [])
    if checks:
        worst = max((max(c["errors"].values()) / c["tol"], c["check"], c["dtype"]) for c in checks)
        failed = [c for c in checks if max(c["errors"].values()) >= c["tol"]]
        lines.append(f"correctness: {len(checks) - len(failed)}/{len(checks)} checks pass "
                     f"(worst error/tolerance {worst[0]:.2f} in '{worst[1]}' {worst[2]})")
        for c in failed:
            lines.append(f"  FAIL {c['check']} {c['dtype']}: " + ", ".join(f"{k}={v:.2e}" for k, v in c["errors"].items()))
    pre = res.get("prefill", [])
    if pre:
        lines.append("")
        lines.append(f"{'prefill':<12}{'floor':>8}{'DSLA fwd':>10}{'SDPA':>8}{'GLA x2':>8}{'vs SDPA':>9}{'vs GLA2':>9}"
                     f"{'DSLA f+b':>10}{'SDPA f+b':>10}{'GLA2 f+b':>10}{'vs SDPA':>9}{'vs GLA2':>9}")
        for r in pre:
            g = r.get("gla2_fwd_ms", float("nan"))
            gb = r.get("gla2_fwd_bwd_ms", float("nan"))
            lines.append(
                f"B={r['B']} T={r['T'] // 1024}k".ljust(12)
                + f"{r['floor']['floor_ms']:>8.3f}{r['dsla_fwd_ms']:>10.3f}{r['sdpa_fwd_ms']:>8.3f}{g:>8.3f}"
                + f"{r['sdpa_fwd_ms'] / r['dsla_fwd_ms']:>8.2f}x{g / r['dsla_fwd_ms']:>8.2f}x"
                + f"{r['dsla_fwd_bwd_ms']:>10.3f}{r['sdpa_fwd_bwd_ms']:>10.3f}{gb:>10.3f}"
                + f"{r['sdpa_fwd_bwd_ms'] / r['dsla_fwd_bwd_ms']:>8.2f}x{gb / r['dsla_fwd_bwd_ms']:>8.2f}x")
        lines.append("(ms; floor = fewest bytes over copy bandwidth vs kernel flops over matmul rate, the larger)")
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
                         + ", ".join(f"{k[:-3]} {v:.3f}" for k, v in r.items() if k.endswith("_ms")))
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
    ap.add_argument("--no-small-checks", action="store_true",
                    help="skip the small-shape checks against naive_dsla (keep those at the benchmark shapes)")
    args = ap.parse_args(argv)
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

    section("ceilings", measure_ceilings)
    if not args.no_small_checks:
        section("correctness_small", check_small_shapes)
    section("correctness_benchmark", check_benchmark_shapes)
    res["tuning_used"] = {name: dict(table) for name, table in TABLES.items()}
    section("prefill", lambda: time_prefill(args.skip_fla))
    if "prefill" in res and "ceilings" in res:
        for r in res["prefill"]:
            r["floor"] = prefill_floor(r["B"], r["T"], res["ceilings"])
    if not args.prefill_only:
        section("decode", lambda: time_decode(args.skip_fla, res["ceilings"]))
        section("decode_graph", time_decode_graph)
    section("kernel_breakdown", kernel_breakdown)
    section("compile_report", compile_report)
    print_table(res)
    if args.sweep:  # last, so that a failing variant cannot cost the table above
        if time.time() - started < args.sweep_deadline:
            section("sweep", lambda: sweep(backward=args.sweep == "all"))
            section("compile_report", compile_report)
            print_table(res)
        else:
            log(f"sweep skipped: {time.time() - started:.0f}s already spent (--sweep-deadline {args.sweep_deadline:.0f})")
    checks = res.get("correctness_small", []) + res.get("correctness_benchmark", [])
    ok = checks and all(max(c["errors"].values()) < c["tol"] for c in checks) and not res["errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
