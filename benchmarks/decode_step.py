"""GPU benchmark of a decode step's parts on the Llama-2-7B shape (random bf16 weights): the projections
and the decode attention, with the weights and caches the engine's runner holds.

    python benchmarks/decode_step.py [--out DIR] [--rows 1,4,16] [--sweep]

1. Projections: for each kind of projection of a depth-24 runner (softmax q/k/v, the DSLA layers' merged
   q/k/v/gates, o, the MLP's gate/up, down after its activation, lm_head) one CUDA graph applies it to
   every layer's weight in turn (as a step does: no weight is in L2 when read), timed replayed, in ms
   per step and in bytes of weight read per second as a fraction of the measured copy bandwidth: which
   GEMMs of the step read their weights below the bandwidth. At one row each kind runs twice: cuBLAS
   (F.linear, the down projection after `silu_mul`) and the Triton `gemv` the runner uses at one row
   (the down projection with the activation at its load); their outputs are compared. `--sweep` also
   times `gemv` at each launch setting of a grid.
2. Decode attention at batch 1 over a 512-token context, all 32 layers' caches, under graphs captured
   for a static bound of 513, 4097 and 32769 keys (the engine captures for max_model_len).

The whole step is timed by benchmarks/engine.py (a). Writes decode_step.json under --out (default $OUT
or benchmarks/results); one table last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # see engine.py
sys.path.insert(0, str(_HERE.parent))
sys.path.append(str(_HERE))

from engine import LLAMA2_7B, build_model, copy_bandwidth, environment  # noqa: E402

from dsla_serve.kernels.attention import decode_attention  # noqa: E402
from dsla_serve.kernels.block import gemv, silu_mul  # noqa: E402
from dsla_serve.kernels.block.gemv import launch_settings  # noqa: E402
from dsla_serve.model import set_depth  # noqa: E402
from dsla_serve.replicas.cache import CachePool  # noqa: E402
from dsla_serve.replicas.model_source import active_dsla_layers, cache_spec  # noqa: E402
from dsla_serve.replicas.runner import ModelRunner  # noqa: E402

DEVICE = "cuda"
DEPTH = 24


def projections(model, runner) -> dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]]:
    """Kind -> the (weight, bias) a decode step reads for it, layer by layer."""
    kinds: dict[str, list] = {"q/k/v": list(runner.qkv.values()), "DSLA q/k/v/gates": list(runner.dsla_proj.values()),
                              "o": [], "gate/up": list(runner.gate_up.values()), "down (+act)": []}
    for i, layer in enumerate(model.model.layers):
        o = runner.dsla[i].o_proj if i in runner.dsla else layer.self_attn.o_proj
        kinds["o"].append((o.weight, o.bias))
        kinds["down (+act)"].append((layer.mlp.down_proj.weight, layer.mlp.down_proj.bias))
    kinds["lm_head"] = [(model.lm_head.weight, None)]
    return {k: v for k, v in kinds.items() if v}


def graph_ms(fn, replays: int = 30) -> float:
    """Median ms of one replay of fn captured in a CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times[3:])


def cublas(x: torch.Tensor, w: torch.Tensor, b, down: bool) -> torch.Tensor:
    """The projection as the runner calls it through cuBLAS (the down projection after `silu_mul`)."""
    return F.linear(silu_mul(x[:, :w.shape[1]], x[:, w.shape[1]:]) if down else x, w, b)


def step_fn(kind: str, weights, x: torch.Tensor, op: str = "cublas", settings: dict | None = None):
    """One step's worth of the projection `kind` (every layer's weight in turn), as the runner calls it:
    op "cublas" (F.linear) or "gemv" (one row; the down projection takes the activation at its load)."""
    down = kind.startswith("down")

    def run():
        for w, b in weights:
            if op == "gemv":
                gemv(x, w, b, silu_mul_input=down, settings=settings)
            else:
                cublas(x, w, b, down)
    return run


SWEEP = [{"BLOCK_N": n, "BLOCK_K": k, "num_warps": w, "num_stages": st}
         for n in (2, 4, 8) for k in (512, 1024) for w in (4, 8) for st in (3,)]


def time_projections(kinds, rows: list[int], bw: float, sweep: bool) -> list[dict]:
    out = []
    for kind, weights in kinds.items():
        nbytes = sum(w.numel() * w.element_size() + (0 if b is None else b.numel() * b.element_size())
                     for w, b in weights)
        K = weights[0][0].shape[1] * (2 if kind.startswith("down") else 1)
        for m in rows:
            x = torch.randn(m, K, device=DEVICE, dtype=torch.bfloat16)
            variants = [("cublas", None)]
            if m == 1:
                w0, b0 = weights[0]
                down = kind.startswith("down")
                got = gemv(x, w0, b0, silu_mul_input=down)
                want = cublas(x, w0, b0, down)
                err = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
                default = launch_settings(down)
                variants += [("gemv", default)] + ([("gemv", s) for s in SWEEP if s != default] if sweep else [])
            for op, settings in variants:
                ms = graph_ms(step_fn(kind, weights, x, op, settings))
                row = {"kind": kind, "rows": m, "op": op, "layers": len(weights), "weight_mb": round(nbytes / 1e6, 1),
                       "shape": list(weights[0][0].shape), "ms": round(ms, 4),
                       "x_copy_bw": round(nbytes / (ms * 1e-3) / bw, 3)}
                if op == "gemv":
                    row["settings"] = settings
                    row["default"] = settings == default
                    row["max_rel_err_vs_cublas"] = round(err, 5)
                out.append(row)
                print(row, flush=True)
    return out


def time_attention(model, bw: float, context: int = 512) -> list[dict]:
    spec = cache_spec(model, 0, 32768)
    pool = CachePool(spec, 1, torch.device(DEVICE))
    layers = model.config.num_hidden_layers
    H, D = model.config.num_attention_heads, model.config.hidden_size // model.config.num_attention_heads
    for i in range(layers):
        pool.k[i][:, :, :context].normal_()
        pool.v[i][:, :, :context].normal_()
    q = torch.randn(1, H, D, device=DEVICE, dtype=torch.bfloat16)
    slots = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    lengths = torch.full((1,), context, dtype=torch.int64, device=DEVICE)
    kv_bytes = layers * 2 * context * pool.k[0].shape[1] * D * pool.k[0].element_size()
    out = []
    for bound in (context + 1, 4097, 32769):
        def run():
            for i in range(layers):
                decode_attention(q, pool.k[i], pool.v[i], slots, lengths, D ** -0.5, bound)
        ms = graph_ms(run)
        row = {"context": context, "static_bound": bound, "ms_per_step": round(ms, 4),
               "us_per_layer": round(1000 * ms / layers, 2), "kv_x_copy_bw": round(kv_bytes / (ms * 1e-3) / bw, 3)}
        out.append(row)
        print(row, flush=True)
    return out


def table(res: dict) -> str:
    lines = ["", "== decode step parts: " + ", ".join(f"{k} {v}" for k, v in res["env"].items()), "",
             f"projections, one step (every layer), copy bandwidth {res['copy_bandwidth_tb_s']} TB/s",
             f"{'kind':>18} {'rows':>4} {'op':>6} {'MB':>7} {'ms':>8} {'x bw':>5}  gemv: vs cuBLAS, rel. error, "
             "best of the sweep"]
    for r in res["projections"]:
        if r.get("default") is False:
            continue
        line = f"{r['kind']:>18} {r['rows']:>4} {r['op']:>6} {r['weight_mb']:>7.0f} {r['ms']:>8.4f} {r['x_copy_bw']:>5.2f}"
        if r["op"] == "gemv":
            base = next(x for x in res["projections"] if x["kind"] == r["kind"] and x["rows"] == 1 and x["op"] == "cublas")
            best = min((x for x in res["projections"] if x["kind"] == r["kind"] and x["op"] == "gemv"),
                       key=lambda x: x["ms"])
            line += f"  {base['ms'] / r['ms']:.3f}x, {r['max_rel_err_vs_cublas']:.1e}"
            if best is not r:
                line += f", {best['ms']:.4f} ms at {best['settings']}"
        lines.append(line)
    lines += ["", "decode attention, batch 1, 32 layers",
              f"{'context':>7} {'bound':>6} {'ms/step':>8} {'us/layer':>8} {'x bw':>5}"]
    for r in res["attention"]:
        lines.append(f"{r['context']:>7} {r['static_bound']:>6} {r['ms_per_step']:>8.4f} {r['us_per_layer']:>8.2f} "
                     f"{r['kv_x_copy_bw']:>5.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(_HERE / "results"), help="output directory")
    ap.add_argument("--rows", default="1,4,16", help="rows (batch) of the projections (default 1,4,16)")
    ap.add_argument("--sweep", action="store_true", help="also time gemv at each launch setting of a grid (one row)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("decode_step.py needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device(DEVICE)
    rows = [int(r) for r in args.rows.split(",")]
    res = {"env": environment(device)}
    bw = copy_bandwidth(device)
    res["copy_bandwidth_tb_s"] = round(bw / 1e12, 3)
    model = build_model(LLAMA2_7B, 32768 + 64, device)
    set_depth(model, DEPTH)
    runner = ModelRunner(model, CachePool(cache_spec(model, DEPTH, 64), 1, device), active_dsla_layers(model, DEPTH))
    kinds = projections(model, runner)
    with torch.inference_mode():
        res["projections"] = time_projections(kinds, rows, bw, args.sweep)
        res["attention"] = time_attention(model, bw)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode_step.json").write_text(json.dumps(res, indent=1, default=str))
    print(table(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
