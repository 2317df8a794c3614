"""Where the batch-1 decode step's time goes outside the CUDA graph (issue 20 (a)); the readout-mix cache
side by side with recomputing it each step. Prints a table last."""
import statistics, sys, time, json, os
import torch
sys.path.insert(0, "benchmarks")
import engine as eb  # benchmarks/engine.py
from dsla_serve.replicas import Engine, SamplingParams
import dsla_serve.replicas.engine as eng_mod
import dsla_serve.replicas.cuda_graphs as cg_mod

dev = torch.device("cuda")
bw = eb.copy_bandwidth(dev)
model = eb.build_model(eb.LLAMA2_7B, 1024, dev)
V = model.config.vocab_size
marks = []

orig_run = cg_mod.DecodeGraphs.run
def run(self, rows):
    t_a = time.perf_counter()
    B = len(rows)
    g = self._graphs.get(self.bucket(B)) or self._capture(self.bucket(B))
    data = [[token, position, slot, position, slot, position + 1, slot] for slot, position, token in rows]
    data += [self._pad] * (g.size - B)
    g.inputs.copy_(torch.tensor(data, dtype=torch.int64).t())
    t_b = time.perf_counter()
    g.graph.replay()
    t_c = time.perf_counter()
    marks.append({"run_in": t_a, "inputs": t_b, "replayed": t_c})
    return g.logits[:B]
cg_mod.DecodeGraphs.run = run
orig_sample = eng_mod.sample
def sample(*a, **k):
    t_d = time.perf_counter()
    out = orig_sample(*a, **k)
    if marks and "sample_in" not in marks[-1]:
        marks[-1].update(sample_in=t_d, sampled=time.perf_counter())
    return out
eng_mod.sample = sample

class Recompute(dict):  # the old behaviour: readout_mix() computed in every forward
    def __init__(self, runner): self.runner = runner
    def __getitem__(self, i): return self.runner.dsla[i].readout_mix()

rows = []
for depth, variant in ((0, "tree"), (24, "tree"), (24, "mix recomputed"), (0, "tree again"), (24, "tree again")):
    e = Engine(model, depth=depth, max_model_len=512 + 130, max_num_seqs=1, require_cuda_graphs=True)
    if variant == "mix recomputed":
        e.runner.readout_mix = Recompute(e.runner)
    params = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
    for warm in (True, False):
        marks.clear()
        s = e.add_request(eb.random_prompts(1, 512, V, seed=depth)[0], params)
        e.step()
        marks.clear()
        starts, ends = [], []
        while not s.finished:
            starts.append(time.perf_counter()); e.step(); ends.append(time.perf_counter())
        s.result()
    step = [b - a for a, b in zip(starts, ends)]
    m = marks[2:]
    med = lambda xs: 1000 * statistics.median(xs)
    g = next(iter(e.graphs._graphs.values()))
    # replay + synchronize, one at a time, and back to back
    single = []
    for _ in range(30):
        torch.cuda.synchronize(); t = time.perf_counter(); g.graph.replay(); torch.cuda.synchronize()
        single.append(time.perf_counter() - t)
    launch = []
    for _ in range(30):
        torch.cuda.synchronize(); t = time.perf_counter(); g.graph.replay(); launch.append(time.perf_counter() - t)
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(50): g.graph.replay()
    b.record(); b.synchronize()
    row = {"depth": depth, "variant": variant, "step_ms": med(step[2:]),
           "before_run_ms": med([x["run_in"] - s0 for x, s0 in zip(m, starts[2:])]),
           "inputs_ms": med([x["inputs"] - x["run_in"] for x in m]),
           "replay_launch_ms": med([x["replayed"] - x["inputs"] for x in m]),
           "until_sample_ms": med([x["sample_in"] - x["replayed"] for x in m]),
           "sample_wait_ms": med([x["sampled"] - x["sample_in"] for x in m]),
           "after_sample_ms": med([e_ - x["sampled"] for x, e_ in zip(m, ends[2:])]),
           "replay_sync_ms": med(single), "launch_alone_ms": med(launch),
           "back_to_back_ms": a.elapsed_time(b) / 50,
           "floor_ms": 1000 * eb.weight_bytes_per_step(model, depth) / bw}
    row["x_floor"] = row["step_ms"] / row["floor_ms"]
    rows.append(row)
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    del e
    eb.free()
json.dump(rows, open(os.path.join(os.environ.get("OUT", "."), "decode_diag.json"), "w"), indent=1)
keys = ["step_ms", "before_run_ms", "inputs_ms", "replay_launch_ms", "until_sample_ms", "sample_wait_ms",
        "after_sample_ms", "replay_sync_ms", "launch_alone_ms", "back_to_back_ms", "floor_ms", "x_floor"]
print("depth variant          " + " ".join(f"{k[:-3] if k.endswith('_ms') else k:>12}" for k in keys))
for r in rows:
    print(f"{r['depth']:5d} {r['variant']:16s} " + " ".join(f"{r[k]:12.4f}" for k in keys))
