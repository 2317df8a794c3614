"""GPU benchmark of the replica engine on a Llama-2-7B-shaped model with random bf16 weights.

    python benchmarks/engine.py [--out DIR] [--timeout SECONDS] [--tiny]

The model is built directly on the GPU (LlamaConfig: hidden 4096, 32 layers, 32 heads, ffn 11008,
vocab 32000), every layer converted to DSLA with order = range(32) (default DSLAConfig, or low-rank gates
with --gate-rank; random-init gates: speed does not depend on the weights' values), then served at
several depths:

(a) decode at batch 1, prompt 512: median ms per decode step (CUDA graph) against the weight-bandwidth
    floor = bytes of the weights one step reads / measured device copy bandwidth (read + write bytes
    over time of a 2 GiB device-to-device copy); `--gemv on,off` times the step with the runner's
    one-row projections as the Triton gemv and through cuBLAS, side by side; `--decode-steps 4,1`
    times greedy passes of 4 steps (the engine's CUDA default) against one step a pass;
(b) output tokens/s at prompts of 8k and 32k tokens, 256 new tokens, at the largest batch the memory
    planner admits, at depths 0, 16, 24, 28: all requests submitted at once, end-to-end tokens/s
    (prefill included) and the steady decode rate (median pure-decode step);
(c) Hugging Face `generate` (SDPA, DynamicCache) on the same model at depth 0 and the same batch and
    prompt (halved on out-of-memory), with fewer new tokens (--hf-new-tokens, default 32) to cap its
    runtime: its per-step time is timed per token with a logits processor;
(d) the engine's prefill alone, at depth 0 and at full depth (--prefill-depths): 4 prompts of 8192 and
    1 of 32768 tokens, one new token each, prompt tokens per second after a warm-up run.

On the GPU, after every timing (steps timed after a profiler session were slower), (d) runs each
prefill once more and (a) replays each captured decode step 20 times under torch.profiler: GPU time
summed per kernel category (GEMMs, softmax attention, DSLA kernels, fused block kernels, the rest) and
per kernel, where each millisecond goes.

CUDA graphs are required on the GPU: a capture failure fails the run (the engine's fallback to eager
decoding would otherwise let it pass at a lower speed); every row records `cuda_graphs`.

Work is ordered by priority and skipped when the remaining --timeout cannot cover it; results are
written to engine.json under --out (default $OUT, else benchmarks/results) after every measurement, and
one table is printed last. --tiny runs the same code at a tiny shape (CPU or GPU) to check the script.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

# run as a script, this folder comes first on sys.path, where benchmarks/kernels.py would shadow the
# `kernels` package that transformers probes for: replace it by the repository root
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from dsla_serve.model import DSLAConfig, convert, dsla_layers, set_depth  # noqa: E402
from dsla_serve.replicas import Engine, SamplingParams  # noqa: E402

LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000)
TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=512)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results", help="output directory")
    p.add_argument("--timeout", type=float, default=560.0, help="seconds of work to plan for (default 560)")
    p.add_argument("--tiny", action="store_true", help="tiny model, short prompts: check the script")
    p.add_argument("--depths", default=None, help="comma-separated depths (default 0,16,24,28; tiny 0,2,3)")
    p.add_argument("--prompts", default=None, help="comma-separated prompt lengths (default 8192,32768)")
    p.add_argument("--new-tokens", type=int, default=None, help="new tokens in (b) (default 256)")
    p.add_argument("--hf-new-tokens", type=int, default=32, help="new tokens of HF generate in (c) (default 32)")
    p.add_argument("--prefill-chunk", type=int, default=8192, help="engine prefill_chunk_tokens (default 8192)")
    p.add_argument("--budget-gib", type=float, default=None,
                   help="cache memory budget (default: the planner's; --tiny: 0.01 GiB)")
    p.add_argument("--skip-hf", action="store_true", help="skip (c)")
    p.add_argument("--prefill-depths", default=None, help="depths of (d) (default 0 and all layers)")
    p.add_argument("--sections", default="a,b,c,d", help="which of (a) (b) (c) (d) to run (default all)")
    p.add_argument("--gemv", default="on", choices=["on", "off", "on,off"],
                   help="(a): the runner's one-row projections as the Triton gemv (on, the default), through "
                        "cuBLAS (off), or both side by side (on,off)")
    p.add_argument("--decode-steps", default="4",
                   help="(a): the engine's decode_steps, comma-separated to time several side by side (e.g. 4,1)")
    p.add_argument("--gate-rank", type=int, default=None,
                   help="convert with low-rank gate projections of this rank (DSLAConfig.gate_rank; default full rank)")
    return p.parse_args(argv)


class Bench:
    """Results, the time budget and the JSON file."""

    def __init__(self, args, device):
        self.args = args
        self.device = device
        self.t0 = time.monotonic()
        gib = args.budget_gib if args.budget_gib is not None else (0.01 if args.tiny else None)
        self.budget = int(gib * 1024**3) if gib is not None else None
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.b1_tokens: dict[tuple[int, bool], tuple[int, list[int]]] = {}  # (a): first tokens per depth, gemv
        self.results = {"env": environment(device), "args": vars(args), "decode_b1": [], "throughput": [],
                        "hf": [], "errors": [], "skipped": []}

    def left(self) -> float:
        return self.args.timeout - (time.monotonic() - self.t0)

    def save(self):
        name = "engine_tiny.json" if self.args.tiny else "engine.json"
        (self.out / name).write_text(json.dumps(self.results, indent=1, default=str))

    def guard(self, what: str, estimate_s: float) -> bool:
        if self.left() < estimate_s:
            self.results["skipped"].append({"what": what, "estimate_s": estimate_s, "left_s": round(self.left(), 1)})
            print(f"[skip] {what}: needs ~{estimate_s:.0f} s, {self.left():.0f} s left", flush=True)
            self.save()
            return False
        print(f"[run] {what} (~{estimate_s:.0f} s est., {self.left():.0f} s left)", flush=True)
        return True

    def error(self, what: str, e: BaseException):
        traceback.print_exc()
        self.results["errors"].append({"what": what, "error": f"{type(e).__name__}: {e}"})
        self.save()


def environment(device) -> dict:
    import transformers
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "device": str(device), "commit": os.environ.get("BENCH_COMMIT")}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 1024**3, 1), sms=props.multi_processor_count)
    return env


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device) -> float | None:
    """Bytes/s of a large device-to-device copy, counting bytes read plus bytes written."""
    if device.type != "cuda":
        return None
    n = 1 << 30  # 1 Gi bf16 elements = 2 GiB
    a = torch.randn(n, device=device, dtype=torch.bfloat16)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        b.copy_(a)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    del a, b
    torch.cuda.empty_cache()
    return 2 * 2 * n / statistics.median(times)


def build_model(shape: dict, max_len: int, device, gate_rank: int | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, max_position_embeddings=max_len, tie_word_embeddings=False, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0)
    config._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if device.type == "cuda" and shape is LLAMA2_7B else torch.float32
    t = time.monotonic()
    torch.manual_seed(0)
    with torch.device(device):
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(default)
    model.eval()
    convert(model, range(config.num_hidden_layers), DSLAConfig(gate_rank=gate_rank))
    sync(device)
    print(f"model built and converted in {time.monotonic() - t:.1f} s", flush=True)
    return model


def weight_bytes_per_step(model, depth: int) -> int:
    """Bytes of parameters one decode step reads: every unique parameter except the embedding table
    (one row is read) and the DSLA twins' own parameters of layers not active at `depth`."""
    set_depth(model, depth)
    skip = {id(model.model.embed_tokens.weight)}
    for twin in dsla_layers(model).values():
        if not twin.active:
            skip |= {id(p) for p in twin.own_parameters().values()}
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or id(p) in skip:
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
    return total


def free():
    """Return freed GPU memory to the device (callers drop their references first)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def random_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, length), generator=g).tolist()


def b1_engine(bench: Bench, model, depth: int, max_model_len: int, decode_steps: int | None = None) -> Engine:
    """(a)'s engine: one sequence, CUDA graphs required on the GPU."""
    return Engine(model, depth=depth, max_model_len=max_model_len, max_num_seqs=1, decode_steps=decode_steps,
                  prefill_chunk_tokens=bench.args.prefill_chunk, require_cuda_graphs=bench.device.type == "cuda")


def decode_b1(bench: Bench, model, depth: int, prompt_len: int, steps: int, bw: float | None, vocab: int,
              gemv: bool = True, decode_steps: int = 4):
    """(a): one request of `steps` new tokens; wall time per token of its pure decode passes (each pass,
    of `decode_steps` greedy steps or one, ends in a host sync; the first two passes left out), and the
    captured pass replayed back to back, per step. gemv False: the step's projections through cuBLAS.
    Its greedy tokens must equal those of the first variant timed at the same depth and gemv setting."""
    engine = b1_engine(bench, model, depth, prompt_len + steps + 1, decode_steps)
    engine.runner.use_gemv = engine.runner.use_gemv and gemv  # before the first step: the graph captures it
    params = SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True)
    for warm in (True, False):
        stream = engine.add_request(random_prompts(1, prompt_len, vocab, seed=depth)[0], params)
        engine.step()  # prefill + first token
        passes = []  # (seconds, tokens)
        while not stream.finished:
            t = time.perf_counter()
            outs = engine.step()
            passes.append((time.perf_counter() - t, sum(len(o.outputs[0].new_token_ids) for o in outs)))
        generated = stream.result().outputs[0].token_ids
    timed = passes[2:]
    ms = 1000 * sum(t for t, _ in timed) / sum(n for _, n in timed)
    graph_ms = None
    if engine.graphs is not None and engine.graphs._graphs:  # the captured pass alone, without engine overhead
        g = max(engine.graphs._graphs.values(), key=lambda g: g.steps)
        # a greedy pass advances its inputs: start every replay from the prompt's end again (a device copy
        # of 64 bytes), or the positions would run past the cache
        g.inputs.fill([(0, prompt_len, 1)])
        start_inputs = g.inputs.tensor.clone()

        def replay():
            g.inputs.tensor.copy_(start_inputs)
            g.graph.replay()

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(3):
            replay()
        start.record()
        for _ in range(50):
            replay()
        end.record()
        end.synchronize()
        graph_ms = start.elapsed_time(end) / 50 / max(1, g.steps)
    check_graphs(engine)
    wbytes = weight_bytes_per_step(model, depth)
    floor_ms = 1000 * wbytes / bw if bw else None
    row = {"depth": depth, "gemv": engine.runner.use_gemv, "decode_steps": engine.decode_steps, "prompt": prompt_len,
           "batch": 1, "new_tokens": steps, "passes": len(passes), "ms_per_token": round(ms, 3),
           "graph_replay_ms": round(graph_ms, 3) if graph_ms else None,
           "weight_gb": round(wbytes / 1e9, 3), "floor_ms": round(floor_ms, 3) if floor_ms else None,
           "x_floor": round(ms / floor_ms, 3) if floor_ms else None, "cuda_graphs": engine.graphs is not None}
    # the same prompt at the same depth and projection path: every decode_steps must give the same tokens
    first = bench.b1_tokens.setdefault((depth, engine.runner.use_gemv), (engine.decode_steps, generated))
    row["same_tokens_as_decode_steps"] = first[0] if first[1] == generated else None
    bench.results["decode_b1"].append(row)
    bench.save()
    print("  ", row, flush=True)
    del engine
    if first[1] != generated:  # recorded in the row; the caller records the error
        raise AssertionError(f"depth {depth}: greedy tokens with decode_steps {row['decode_steps']} differ from "
                             f"decode_steps {first[0]}'s")


def profile_decode_b1(bench: Bench, model, depth: int, prompt_len: int, vocab: int, replays: int = 20):
    """(a)'s profile: GPU ms per captured decode step by kernel category, added to depth's row."""
    engine = b1_engine(bench, model, depth, prompt_len + 4)
    engine.generate([random_prompts(1, prompt_len, vocab, seed=depth)[0]],
                    SamplingParams(temperature=0, max_tokens=3, ignore_eos=True), use_tqdm=False)
    g = next(iter(engine.graphs._graphs.values()))

    def replay():
        for _ in range(replays):
            g.graph.replay()
        sync(bench.device)

    replay()
    prof = profile_gpu(replay)
    row = next(r for r in bench.results["decode_b1"] if r["depth"] == depth and r.get("gemv", True))
    row.update({"gpu_ms_per_step": round(prof["gpu_ms"] / replays, 3),
                "gpu_ms_per_step_by_category": {k: round(v / replays, 3) for k, v in prof["gpu_ms_by_category"].items()},
                "top_kernels_ms_per_step": {k: round(v / replays, 3) for k, v in prof["top_kernels_ms"].items()}})
    bench.save()
    print("   depth", depth, "GPU ms per step:", row["gpu_ms_per_step"], row["gpu_ms_per_step_by_category"], flush=True)
    del engine


def throughput(bench: Bench, model, depth: int, prompt_len: int, new_tokens: int, vocab: int):
    """(b): the largest batch the planner admits, all submitted at once."""
    engine = Engine(model, depth=depth, max_model_len=prompt_len + new_tokens, max_num_seqs=4096,
                    max_queue=4096, prefill_chunk_tokens=bench.args.prefill_chunk,
                    memory_budget_bytes=bench.budget, require_cuda_graphs=bench.device.type == "cuda")
    plan = engine.plan
    B = plan.max_seqs
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    prompts = random_prompts(B, prompt_len, vocab, seed=prompt_len + depth)
    sync(bench.device)
    t0 = time.perf_counter()
    streams = [engine.add_request(p, params, keep_history=False) for p in prompts]
    step_times, all_prefilled_at = [], None
    while engine.has_unfinished():
        t = time.perf_counter()
        engine.step()
        dt = time.perf_counter() - t
        if all_prefilled_at is None and not any(r.prefilling for r in engine.scheduler.running) \
                and not engine.scheduler.waiting:
            all_prefilled_at = time.perf_counter()
        elif all_prefilled_at is not None and engine.scheduler.running:
            step_times.append((dt, len(engine.scheduler.running)))
    total = time.perf_counter() - t0
    outs = [s.result() for s in streams]
    assert all(len(o.outputs[0].token_ids) == new_tokens for o in outs), [o.error for o in outs if o.error][:1]
    check_graphs(engine)
    full = [dt for dt, n in step_times if n == B]
    step_ms = 1000 * statistics.median(full) if full else None
    row = {"depth": depth, "prompt": prompt_len, "new_tokens": new_tokens, "batch": B,
           "bytes_per_seq_gb": round(plan.bytes_per_seq / 1e9, 3), "cache_gb": round(plan.cache_bytes / 1e9, 2),
           "limited_by": plan.limited_by, "total_s": round(total, 2),
           "prefill_s": round(all_prefilled_at - t0, 2) if all_prefilled_at else None,
           "e2e_out_tok_s": round(B * new_tokens / total, 1),
           "decode_step_ms": round(step_ms, 2) if step_ms else None,
           "decode_tok_s": round(B / step_ms * 1000, 1) if step_ms else None,
           "cuda_graphs": engine.graphs is not None}
    bench.results["throughput"].append(row)
    bench.save()
    print("  ", row, flush=True)
    del engine, streams, outs
    return row


def check_graphs(engine) -> None:
    """On the GPU the decode steps must have run in CUDA graphs."""
    state = engine.stats().cuda_graphs
    if engine.device.type == "cuda" and state != "on":
        raise RuntimeError(f"CUDA graphs are not in use: {state}")


CATEGORIES = (  # kernel name fragments -> category of the prefill profile, first match wins
    ("DSLA kernels", ("_chunk_decays_kernel", "_forward_states_kernel", "_chunk_scores_kernel",
                      "_chunk_output_kernel", "_recurrent_kernel")),
    ("softmax attention", ("flash", "fmha", "attention", "_decode_split_kernel", "_combine_kernel")),
    ("fused block kernels", ("_add_rmsnorm_kernel", "_rope_kv_kernel", "_silu_mul_kernel")),
    ("GEMM", ("gemm", "gemv", "nvjet", "cutlass", "xmma", "matmul", "splitk", "sm90")),
)


def categorize(name: str) -> str:
    low = name.lower()
    for category, fragments in CATEGORIES:
        if any(f.lower() in low for f in fragments):
            return category
    return "other (elementwise, copies, sampling)"


def profile_gpu(run) -> dict:
    """GPU milliseconds of one run under torch.profiler: in total, per category, the top kernels."""
    from torch.profiler import ProfilerActivity

    with torch.profiler.profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
    kernels: dict[str, float] = {}
    for ev in prof.key_averages():
        us = getattr(ev, "self_device_time_total", 0) or 0
        if us > 0:
            kernels[ev.key] = kernels.get(ev.key, 0.0) + us / 1000
    by_category: dict[str, float] = {}
    for name, ms in kernels.items():
        by_category[categorize(name)] = by_category.get(categorize(name), 0.0) + ms
    return {"gpu_ms": round(sum(kernels.values()), 1),
            "gpu_ms_by_category": {k: round(v, 1) for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
            "top_kernels_ms": {k[:90]: round(v, 1) for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:15]}}


def prefill_rate(bench: Bench, model, depth: int, prompt_len: int, batch: int, vocab: int, profile: bool = False):
    """(d): prompt tokens/s of the engine's prefill alone (one new token per request: no decode step);
    with `profile`, instead one run under torch.profiler, its GPU time added to the row timed before."""
    engine = Engine(model, depth=depth, max_model_len=prompt_len + 1, max_num_seqs=batch, max_queue=batch,
                    prefill_chunk_tokens=bench.args.prefill_chunk, memory_budget_bytes=bench.budget)
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)

    def run(seed: int) -> float:
        prompts = random_prompts(batch, prompt_len, vocab, seed=seed)
        sync(bench.device)
        t0 = time.perf_counter()
        streams = [engine.add_request(p, params, keep_history=False) for p in prompts]
        while engine.has_unfinished():
            engine.step()
        sync(bench.device)
        elapsed = time.perf_counter() - t0
        assert all(len(s.result().outputs[0].token_ids) == 1 for s in streams)
        return elapsed

    run(seed=1)  # warm-up: kernels compiled and GEMM algorithms chosen at these shapes
    if profile:
        row = next(r for r in bench.results["prefill"]
                   if (r["depth"], r["prompt"], r["batch"]) == (depth, prompt_len, batch))
        try:
            row.update(profile_gpu(lambda: run(seed=3)))
        except Exception as e:  # noqa: BLE001 - keep the rate measured before
            row["profile_error"] = f"{type(e).__name__}: {e}"[:300]
    else:
        seconds = run(seed=2)
        tokens = batch * prompt_len
        row = {"depth": depth, "prompt": prompt_len, "batch": batch, "tokens": tokens, "seconds": round(seconds, 3),
               "prompt_tok_s": round(tokens / seconds, 1), "prefill_chunk": bench.args.prefill_chunk}
        bench.results.setdefault("prefill", []).append(row)
    bench.save()
    print("  ", {k: v for k, v in row.items() if k != "top_kernels_ms"}, flush=True)
    del engine


def hf_generate(bench: Bench, model, prompt_len: int, batch: int, new_tokens: int, vocab: int):
    """(c): HF generate at depth 0; per-step times from a logits processor (synchronises each step)."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class StepClock(LogitsProcessor):
        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores):
            sync(bench.device)
            self.times.append(time.perf_counter())
            return scores

    set_depth(model, 0)
    while batch >= 1:
        ids = torch.tensor(random_prompts(batch, prompt_len, vocab, seed=7), device=bench.device)
        clock = StepClock()
        oom = False
        try:
            sync(bench.device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                               logits_processor=LogitsProcessorList([clock]))
            sync(bench.device)
            total = time.perf_counter() - t0
        except torch.OutOfMemoryError:
            oom = True
        if not oom:
            break
        del ids  # outside the except clause, so the traceback no longer pins the cache
        free()
        print(f"   HF generate: out of memory at batch {batch}, halving", flush=True)
        batch //= 2
    else:
        bench.results["hf"].append({"prompt": prompt_len, "batch": 0, "note": "out of memory at batch 1"})
        bench.save()
        return None
    steps = [b - a for a, b in zip(clock.times, clock.times[1:])]
    step_ms = 1000 * statistics.median(steps)
    row = {"depth": 0, "prompt": prompt_len, "new_tokens": new_tokens, "batch": batch, "total_s": round(total, 2),
           "prefill_s": round(clock.times[0] - t0, 2), "e2e_out_tok_s": round(batch * new_tokens / total, 1),
           "decode_step_ms": round(step_ms, 2), "decode_tok_s": round(batch / step_ms * 1000, 1)}
    bench.results["hf"].append(row)
    bench.save()
    print("  ", row, flush=True)
    del ids
    return row


def check_vs_hf(bench: Bench, model, depths: list[int], vocab: int):
    """--tiny: greedy tokens of the engine (CUDA graphs, Triton kernels on a GPU) against HF generate."""
    prompts = random_prompts(4, 24, vocab, seed=3)
    for depth in depths:
        engine = Engine(model, depth=depth, max_model_len=64, max_num_seqs=4)
        outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False)
        del engine
        set_depth(model, depth)
        ids = torch.tensor(prompts, device=bench.device)
        with torch.inference_mode():
            ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, min_new_tokens=16,
                                 do_sample=False, pad_token_id=0)[:, 24:].tolist()
        same = sum(o.outputs[0].token_ids == r for o, r in zip(outs, ref))
        row = {"depth": depth, "prompts": len(prompts), "identical_to_hf": same}
        bench.results.setdefault("check_vs_hf", []).append(row)
        print("   check vs HF generate:", row, flush=True)
    bench.save()


def table(results: dict) -> str:
    lines = ["", "== engine benchmark: " + ", ".join(f"{k} {v}" for k, v in results["env"].items()), ""]
    bw = results.get("copy_bandwidth_tb_s")
    lines.append(f"(a) decode, batch 1, prompt 512 (copy bandwidth {bw} TB/s)")
    lines.append(f"{'depth':>5} {'gemv':>5} {'steps':>5} {'ms/token':>9} {'graph ms':>9} {'weights GB':>10} "
                 f"{'floor ms':>9} {'x floor':>8}")
    for r in results["decode_b1"]:
        lines.append(f"{r['depth']:>5} {'on' if r.get('gemv', True) else 'off':>5} {r.get('decode_steps', 1):>5} "
                     f"{r['ms_per_token']:>9.2f} "
                     f"{r.get('graph_replay_ms') or '-':>9} "
                     f"{r['weight_gb']:>10.2f} "
                     f"{r['floor_ms'] if r['floor_ms'] is not None else '-':>9} {r['x_floor'] or '-':>8}")
    for r in results["decode_b1"]:
        if "gpu_ms_per_step_by_category" in r:
            lines.append(f"    depth {r['depth']}: GPU {r['gpu_ms_per_step']} ms per captured step: "
                         + ", ".join(f"{k} {v}" for k, v in r["gpu_ms_per_step_by_category"].items()))
    lines.append("")
    lines.append("(b) engine throughput (largest batch that fits) and (c) HF generate (depth 0)")
    lines.append(f"{'who':>6} {'prompt':>6} {'depth':>5} {'batch':>5} {'new':>4} {'prefill s':>9} {'total s':>8} "
                 f"{'e2e tok/s':>9} {'step ms':>8} {'decode tok/s':>12} {'e2e/d0':>6} {'dec/d0':>6}")
    base = {r["prompt"]: r for r in results["throughput"] if r["depth"] == 0}
    for r in results["throughput"] + [dict(r, who="HF") for r in results["hf"] if r.get("batch")]:
        b0 = base.get(r["prompt"])
        ratio = f"{r['e2e_out_tok_s'] / b0['e2e_out_tok_s']:.2f}" if b0 and "who" not in r else "-"
        dec = (f"{r['decode_tok_s'] / b0['decode_tok_s']:.2f}"
               if b0 and "who" not in r and r["decode_tok_s"] and b0["decode_tok_s"] else "-")
        lines.append(f"{r.get('who', 'engine'):>6} {r['prompt']:>6} {r['depth']:>5} {r['batch']:>5} "
                     f"{r['new_tokens']:>4} {r['prefill_s'] if r['prefill_s'] is not None else '-':>9} "
                     f"{r['total_s']:>8} {r['e2e_out_tok_s']:>9} {r['decode_step_ms'] or '-':>8} "
                     f"{r['decode_tok_s'] or '-':>12} {ratio:>6} {dec:>6}")
    for r in results["hf"]:
        b0 = base.get(r["prompt"])
        if r.get("batch") and b0:
            lines.append(f"engine d0 / HF at prompt {r['prompt']}: e2e {b0['e2e_out_tok_s'] / r['e2e_out_tok_s']:.1f}x, "
                         f"decode {b0['decode_tok_s'] / r['decode_tok_s']:.1f}x (HF batch {r['batch']}, "
                         f"{r['new_tokens']} new tokens)" if b0.get("decode_tok_s") else "")
    pre = results.get("prefill", [])
    if pre:
        lines.append("")
        lines.append("(d) engine prefill alone (prompt tokens/s; GPU ms per category from one profiled run)")
        base = {r["prompt"]: r for r in pre if r["depth"] == 0}
        for r in pre:
            b0 = base.get(r["prompt"])
            ratio = f"{r['prompt_tok_s'] / b0['prompt_tok_s']:.2f}x depth 0" if b0 else ""
            lines.append(f"depth {r['depth']:>2} prompt {r['prompt']:>5} x {r['batch']}: {r['prompt_tok_s']:>9.0f} tok/s "
                         f"({r['seconds']:.2f} s) {ratio}")
            if "gpu_ms_by_category" in r:
                lines.append("    GPU " + f"{r['gpu_ms']} ms: " + ", ".join(f"{k} {v}" for k, v in r["gpu_ms_by_category"].items()))
    for r in results.get("check_vs_hf", []):
        lines.append(f"check: depth {r['depth']}: {r['identical_to_hf']}/{r['prompts']} greedy outputs identical to HF generate")
    for s in results["skipped"]:
        lines.append(f"skipped: {s['what']} (needed ~{s['estimate_s']:.0f} s, {s['left_s']} s left)")
    for e in results["errors"]:
        lines.append(f"error: {e['what']}: {e['error']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny
    depths = [int(x) for x in (args.depths or ("0,2,3" if tiny else "0,16,24,28")).split(",")]
    prompts = [int(x) for x in (args.prompts or ("64,128" if tiny else "8192,32768")).split(",")]
    new_tokens = args.new_tokens or (8 if tiny else 256)
    shape = TINY if tiny else LLAMA2_7B
    vocab = shape["vocab_size"]
    b1_prompt, b1_steps = (32, 8) if tiny else (512, 128)
    bench = Bench(args, device)
    bw = copy_bandwidth(device)
    bench.results["copy_bandwidth_tb_s"] = round(bw / 1e12, 3) if bw else None
    model = build_model(shape, max(prompts) + new_tokens + 64, device, args.gate_rank)

    sections = set(args.sections.split(","))
    gemv_modes = [m == "on" for m in args.gemv.split(",")]
    decode_steps = [int(k) for k in args.decode_steps.split(",")]
    if tiny:
        check_vs_hf(bench, model, depths, vocab)

    layers = model.config.num_hidden_layers
    prefill_depths = [int(x) for x in (args.prefill_depths or f"0,{layers}").split(",")]
    prefill_shapes = ((64, 2), (128, 1)) if tiny else ((8192, 4), (32768, 1))
    if "d" in sections:  # (d) first: the prefill figures the kernels issue asks for
        for p, batch in prefill_shapes:
            for d in prefill_depths:
                if bench.guard(f"(d) prefill depth {d} prompt {p} x {batch}", 3 if tiny else 20):
                    try:
                        prefill_rate(bench, model, d, p, batch, vocab)
                    except Exception as e:  # noqa: BLE001
                        bench.error(f"(d) depth {d} prompt {p}", e)
                    free()

    for d in [0] + [d for d in depths if d != 0] if "a" in sections else []:  # (a)
        for gemv in gemv_modes:
            for k in decode_steps:
                if bench.guard(f"(a) decode b1 depth {d} gemv {gemv} decode_steps {k}", 3 if tiny else 12):
                    try:
                        decode_b1(bench, model, d, b1_prompt, b1_steps, bw, vocab, gemv, k)
                    except Exception as e:  # noqa: BLE001
                        bench.error(f"(a) depth {d} gemv {gemv} decode_steps {k}", e)
                    free()

    # priority: depth 0 and its HF baseline, then the deepest-but-one depth (24 by default), per prompt;
    # then the remaining depths
    key = sorted(depths)[-2] if len(depths) > 2 else max(depths)
    order = [(p, d) for p in prompts for d in dict.fromkeys((0, key))]
    order += [(p, d) for d in sorted(depths, reverse=True) for p in prompts if (p, d) not in order]
    rate_guess = 1e9 if tiny else 15000.0  # prefill tokens/s, a rough guess to skip what cannot finish
    rows = {}
    for p, d in order if "b" in sections else []:
        est_batch = rows.get((p, 0), {}).get("batch", 8) * (1 + d / 4)
        estimate = 5 if tiny else min(240, est_batch * p / rate_guess + new_tokens * 0.04 + 15)
        if bench.guard(f"(b) engine prompt {p} depth {d}", estimate):
            try:
                rows[(p, d)] = throughput(bench, model, d, p, new_tokens, vocab)
            except Exception as e:  # noqa: BLE001
                bench.error(f"(b) prompt {p} depth {d}", e)
            free()
        if d == 0 and not args.skip_hf and "c" in sections and (p, 0) in rows:
            b = rows[(p, 0)]["batch"]
            if bench.guard(f"(c) HF generate prompt {p}", 5 if tiny else b * p / 6000 + args.hf_new_tokens * 0.15 + 10):
                try:
                    hf_generate(bench, model, p, b, args.hf_new_tokens, vocab)
                except Exception as e:  # noqa: BLE001
                    bench.error(f"(c) prompt {p}", e)
                free()

    # Profiles last: no timing follows a torch.profiler session (on the H100, batch-1 decode steps timed
    # after profiles took 0.47-0.70 ms more than their graph; in a process that never profiled, 0.11-0.22 ms).
    if device.type == "cuda":
        timed = {(r["depth"], r["prompt"], r["batch"]) for r in bench.results.get("prefill", [])}
        for p, batch in prefill_shapes if "d" in sections else []:
            for d in prefill_depths:
                if (d, p, batch) in timed and bench.guard(f"(d) profile depth {d} prompt {p} x {batch}", 10):
                    try:
                        prefill_rate(bench, model, d, p, batch, vocab, profile=True)
                    except Exception as e:  # noqa: BLE001
                        bench.error(f"(d) profile depth {d} prompt {p}", e)
                    free()
        for d in dict.fromkeys(r["depth"] for r in bench.results["decode_b1"]) if "a" in sections else []:
            if bench.guard(f"(a) profile depth {d}", 5):
                try:
                    profile_decode_b1(bench, model, d, b1_prompt, vocab)
                except Exception as e:  # noqa: BLE001
                    bench.error(f"(a) profile depth {d}", e)
                free()
    bench.results["elapsed_s"] = round(time.monotonic() - bench.t0, 1)
    bench.save()
    print(table(bench.results), flush=True)
    return 0 if not bench.results["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
