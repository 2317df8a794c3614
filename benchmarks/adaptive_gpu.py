"""The adaptive claim on one GPU, in one process (the GPU image has no Ray): the package's engines as
replicas, the policy actor's control (`PolicyControl`, the real `decide`) and the ingress's routing
(`RoutingTable`) driving them in one thread (benchmarks/adaptive_serve.py, adaptive_fleet.py), against
three policies with the same places on the device and the same cache budget per replica:

    adaptive     pools `accurate` (depth 0) and `fast` (the deepest depth the quality floor allows), one
                 replica each to start, max_replicas = all places each: the policy moves traffic deeper
                 under pressure and moves places between the pools (a replica stopped, finishing its
                 requests, and a new engine built at the other depth: its real build time is paid)
    static-d0    one pool at depth 0 on every place
    static-deep  one pool at the deepest depth on every place

    python benchmarks/adaptive_gpu.py                                   # Llama-2-7B shape, random bf16 weights
    python benchmarks/adaptive_gpu.py --model smollm2-135m --artifact ARTIFACT --budget-gib 0.25 ...

Each variant serves the same requests (same arrivals, prompts and lengths, from the same seeds) at
every rate of the sweep (Poisson, `--seconds` each) and on a burst trace (Poisson phases quiet, burst,
quiet, burst, quiet of `--burst-phase-s` each); every run starts from the variant's initial replicas
and a fresh controller, so runs do not depend on each other or on the order. A replica serves as many
sequences at once as the memory planner admits at its depth within `--budget-gib` (its pool's
max_concurrent_requests); deeper depths hold less KV cache per sequence, so they admit more. Figures per
run (`dsla_serve/bench/report.py`, as `dsla-serve bench` computes them): SLO attainment (share of
requests meeting TTFT, TPOT and end-to-end targets), goodput (such requests per second), mean served
depth (the quality proxy: 0 is the original model), latency percentiles, errors by kind (`timeout`:
still running `--drain` s after the arrivals ended).

Models:

- `--model 7b-shape` (default): the Llama-2-7B shape (hidden 4096, 32 layers, 32 heads, FFN 11008,
  vocab 32000) with random bf16 weights, every layer converted as benchmarks/engine.py builds it
  (its `build_model`). Random weights have no quality: quality per depth is **assumed**, a ppl ratio
  rising linearly from 1 at depth 0 to `--assumed-ppl-ratio` at `--deep`, which is the floor; the
  output says so. Prompts are random token ids.
- `--model SPEC --artifact PATH` (e.g. smollm2-135m, a HF folder): the base model with the artifact's
  layers; quality per depth is the manifest's, read by the policy actor's own reader, and the deepest
  depth is the floor it gives under `--max-ppl-ratio`. Prompts are cut from `--corpus`, tokenized.

Sizing of the defaults for an H100 (about 4.5-5.5 minutes in all, `--timeout` 330 s skips what would
not finish): 2 places of 8 GiB cache each; prompts of 2048-4096 tokens, 128-256 output tokens
(max_model_len 4352): the memory plan admits about 3 sequences per replica at depth 0 and about 20 at
depth 28 (KV 512 KiB a token at depth 0, 64 KiB at depth 28 plus 112 MiB of DSLA state per sequence);
rates 1, 2, 3 requests/s for 20 s each plus up to 10 s to drain, and a 20 s burst trace (0.5 and 4
requests/s); that is 12 runs of about 25 s, plus building the model (~15 s) and warming engines. The
rates are placed from benchmarks/RESULTS.md's engine figures (decode steps of 6-8 ms at small batches,
prefill 20-40k tokens/s): depth 0 should saturate near 1-1.5 requests/s on 2 x 3 sequences, depth 28
near 3; check the first table and move `--rates` if neither static variant saturates.

Controller (the policy's, so that it acts within a 20 s run): interval 1 s, window 10 s, cooldown 3 s,
min_samples 5, traffic step 0.5, hysteresis 0.2; queue cap 64. SLO: TTFT p95 3000 ms, TPOT p95 150 ms,
end to end p95 30000 ms.

Writes `<name>.json` under `--out` (every run: its summary, a timeline of the decisions, replica
starts and stops with their seconds, the decisions that changed something; the policies; the sizing;
written again after every run) and `<name>.png` (SLO attainment and goodput against rate), prints a
line per run as it ends, then the table and the issue's goals checked against it.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# run as a script, this folder comes first on sys.path, where benchmarks/kernels.py would shadow the
# `kernels` package that transformers probes for: the repository root instead (benchmarks.* is importable)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(REPO))



from benchmarks.adaptive_sweep import VARIANTS, build_policy, max_model_len, sweep  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="7b-shape", help="7b-shape (random bf16 weights), or a model name the "
                   "package loads (smollm2-135m, a folder) with --artifact")
    p.add_argument("--artifact", help="the DSLA artifact of --model (not with 7b-shape)")
    p.add_argument("--deep", type=int, default=28, help="7b-shape: the deepest depth served (default 28)")
    p.add_argument("--assumed-ppl-ratio", type=float, default=1.1,
                   help="7b-shape: the ppl ratio assumed at --deep (linear from 1 at depth 0)")
    p.add_argument("--max-ppl-ratio", type=float, default=1.5, help="--artifact: the policy's quality floor")
    p.add_argument("--dtype", default=None, help="--artifact: model dtype (default bfloat16 on CUDA, else float32)")
    p.add_argument("--corpus", default=str(REPO / "tests" / "data" / "alice_ch1-2.txt"),
                   help="--artifact: text the prompts are cut from")
    p.add_argument("--places", type=int, default=2, help="replicas on the device at once (default 2)")
    p.add_argument("--budget-gib", type=float, default=8.0, help="cache budget of every replica (default 8)")
    p.add_argument("--max-seqs", type=int, default=64, help="most sequences one replica runs at once")
    p.add_argument("--prefill-chunk", type=int, default=2048, help="engine prefill_chunk_tokens")
    p.add_argument("--prompt-tokens", default="uniform:2048:4096", help="prompt lengths: fixed:N or "
                   "uniform:LOW:HIGH (tokens)")
    p.add_argument("--output-tokens", default="uniform:128:256", help="output lengths, as --prompt-tokens")
    p.add_argument("--rates", default="1,2,3", help="requests/s of the sweep")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of arrivals per rate")
    p.add_argument("--drain", type=float, default=10.0, help="seconds after the arrivals before the rest "
                   "counts as timeout")
    p.add_argument("--burst", default="0.5,4", help="the burst trace's quiet and burst rates ('' for none)")
    p.add_argument("--burst-phase-s", type=float, default=4.0, help="seconds of each of its 5 phases")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--slo", default="3000,150,30000", help="TTFT, TPOT, E2E p95 targets in ms")
    p.add_argument("--interval", type=float, default=1.0, help="controller.interval_s")
    p.add_argument("--window", type=float, default=10.0, help="controller.window_s")
    p.add_argument("--cooldown", type=float, default=3.0, help="controller.cooldown_s")
    p.add_argument("--min-samples", type=int, default=5, help="controller.min_samples")
    p.add_argument("--traffic-step", type=float, default=0.5, help="controller.traffic_step")
    p.add_argument("--queue-cap", type=int, default=64, help="http.queue_cap")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=330.0, help="seconds for everything; a run that would "
                   "end later is skipped (and listed)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(HERE / "results"), help="output directory")
    p.add_argument("--name", default="adaptive_gpu", help="NAME.json, NAME.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if (args.model == "7b-shape") == (args.artifact is not None):
        p.error("--artifact goes with a model other than 7b-shape, and such a model needs one")
    return args


@dataclass
class Source:
    """The model every replica serves, with where its quality per depth comes from.

    model: converted to at least `deep` layers. corpus_ids: token ids prompts are cut from.
    artifact: the artifact the policy names (read by the policy actor's reader), or None with
    `assumed` (ppl ratio of depths 1..deep, assumed, not measured). deep: the deepest depth served."""

    label: str
    model: object
    corpus_ids: list[int]
    deep: int
    artifact: str | None = None
    assumed: list[float] | None = None

    @property
    def quality_note(self) -> str:
        if self.artifact is not None:
            return f"measured: the artifact's manifest ({self.artifact})"
        return (f"ASSUMED, not measured (random weights): ppl ratio linear from 1.0 at depth 0 to "
                f"{self.assumed[-1]:.3f} at depth {self.deep}")


def in_memory_source(label: str, model, deep: int, ratio_at_deep: float, seed: int = 0) -> Source:
    """A converted in-memory model with assumed quality; prompts of random ids in [3, vocab)."""
    vocab = model.config.vocab_size
    rng = random.Random(seed)
    ids = [rng.randrange(3, vocab) for _ in range(1 << 16)]
    assumed = [1.0 + (ratio_at_deep - 1.0) * d / deep for d in range(1, deep + 1)]
    return Source(label, model, ids, deep, assumed=assumed)


def artifact_source(args, device) -> Source:
    """--model with --artifact: its layers loaded, the floor under --max-ppl-ratio as the deepest depth."""
    from dsla_serve.bench.workload import Corpus
    from dsla_serve.controller.control_plane.artifact_view import read_artifact
    from dsla_serve.model import Artifact
    from dsla_serve.model.loading import load_model_and_tokenizer
    from dsla_serve.policies import explain_floor

    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=dtype, device=device)
    Artifact.open(args.artifact).apply(model)
    view = read_artifact(args.artifact)  # the policy actor's own reader of the manifest
    floor = explain_floor(build_policy("static-d0", args, {0: 1}, artifact=args.artifact, deep=0), view.quality)[0]
    corpus = Corpus.from_files([args.corpus], lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])
    return Source(args.model, model.eval(), corpus.ids, floor, artifact=args.artifact)


def seven_b_source(args, device) -> Source:
    """The Llama-2-7B shape as benchmarks/engine.py builds it (random bf16, all 32 layers converted)."""
    from benchmarks.engine import LLAMA2_7B, build_model

    max_len = max_model_len(args)
    model = build_model(LLAMA2_7B, max_len, device)
    if not 0 <= args.deep <= LLAMA2_7B["num_hidden_layers"]:
        raise SystemExit(f"--deep {args.deep}: the model has {LLAMA2_7B['num_hidden_layers']} layers")
    return in_memory_source("llama2-7b-shape, random bf16", model, args.deep, args.assumed_ppl_ratio, args.seed)


def environment(device) -> dict:
    from benchmarks.engine import environment as engine_environment

    return {**engine_environment(device), "machine": platform.machine(), "cpus": os.cpu_count()}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.monotonic()
    source = seven_b_source(args, device) if args.artifact is None else artifact_source(args, device)
    record = sweep(args, source, environment(device), deadline=t0 + args.timeout)
    return 0 if record["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
