"""The adaptive claim on this CPU machine, through the real Ray Serve app: a rate sweep and a burst
trace against three deployments of the same model with the same replicas and memory, back to back.

    dsla-serve convert examples/convert-tiny.yaml --depth 4 --output ARTIFACT   # every layer, ppl ratios measured
    python benchmarks/adaptive_cpu.py --artifact ARTIFACT --output-dir benchmarks/results

Each rate sends `--seconds` of Poisson arrivals (60 s: long enough for the policy actor, deciding every
second with a 5 s cooldown and a 15 s window, to act within the run), then waits 20 s: queues drain,
and the adaptive deployment sees the load drop (and may move back towards depth 0) before the next rate.
The burst trace (`--burst QUIET,BURST`) alternates 20 s phases of Poisson arrivals at the two rates.

    adaptive     pools `accurate` (depth 0) and `fast` (the deepest depth), one replica each to start,
                 max_replicas 2 each on a Ray of 2 CPUs (a replica takes 1, so 2 run at once): the
                 policy actor moves traffic deeper under pressure and sets replica targets, bounded by
                 Ray's 2 CPUs (2 replicas in all: the idle pool gives its CPU to the busy one); the
                 timeline shows targets, running and starting/stopping replicas
    static-d0    one pool at depth 0, 2 replicas
    static-deep  one pool at the deepest depth, 2 replicas

Every replica has the same max_concurrent_requests and engine memory budget. The workload (long
prompts, short answers) is the one where depth matters on a CPU: softmax attention's prefill grows
with the square of the prompt, DSLA's linearly. Each variant gets the same rates and the same trace,
generated with the same seeds, measured with `dsla-serve bench`'s code (dsla_serve/bench/). Writes
`<name>.json` (every run with the load average before and after it, a timeline of each run sampled
every 2 s: routing weights, replica targets, replicas running per pool, requests in flight per pool,
the policy actor's last decisions; rewritten after each variant) and `<name>.png` (SLO attainment and
goodput against rate), and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0]).resolve() == HERE:
    sys.path.pop(0)  # Ray hands the driver's path to its workers: benchmarks/kernels.py would shadow `kernels`
REPO = HERE.parent
sys.path.insert(0, str(REPO))

SLO = {"ttft_p95_ms": 3000, "tpot_p95_ms": 400, "e2e_p95_ms": 8000}
PROMPT_TOKENS, OUTPUT_TOKENS = "uniform:2048:4000", "uniform:16:32"  # within the tiny model's 4096 positions
POOL = {"resources": {"num_cpus": 1}, "max_concurrent_requests": 4}


def policy(variant: str, port: int, artifact: str, deep: int) -> dict:
    """The policy of one variant (same model, SLO, controller, limits; pools differ)."""
    if variant == "adaptive":
        pools = [{"name": "accurate", "depth": 0, "min_replicas": 0, "max_replicas": 2, "initial_replicas": 1, **POOL},
                 {"name": "fast", "depth": deep, "min_replicas": 1, "max_replicas": 2, "initial_replicas": 1, **POOL}]
    elif variant == "static-d0":
        pools = [{"name": "accurate", "depth": 0, "min_replicas": 2, "max_replicas": 2, **POOL}]
    else:
        pools = [{"name": "fast", "depth": deep, "min_replicas": 2, "max_replicas": 2, **POOL}]
    return {
        "name": variant.replace("-", "_"),
        "model": {"path": "tiny:llama", "dtype": "float32", "max_model_len": 4096},
        "artifact": artifact,
        "pools": pools,
        "slo": SLO,
        "quality": {"max_ppl_ratio": 1.5, "max_depth": deep},
        "controller": {"interval_s": 1, "window_s": 15, "cooldown_s": 5, "hysteresis": 0.2, "min_samples": 5,
                       "traffic_step": 0.5},
        "http": {"host": "127.0.0.1", "port": port, "max_prompt_tokens": 4064, "max_tokens_limit": 32,
                 "queue_cap": 32},
    }


def burst_trace(quiet: float, burst: float, seed: int = 0) -> list:
    """Quiet and burst phases of Poisson arrivals (`quiet`, `burst` requests/s), 20 s each: quiet, burst,
    quiet, burst, quiet; about 100 s and 60 x quiet + 40 x burst requests."""
    from dsla_serve.bench.arrivals import phases

    return phases([(quiet, 20), (burst, 20), (quiet, 20), (burst, 20), (quiet, 20)], seed)


def machine() -> str:
    """CPUs and their model name (platform.processor() is empty on Linux)."""
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{os.cpu_count()} CPUs, {model}"


async def sample_timeline(url: str, app: str, timeline: list, stop: asyncio.Event, every_s: float = 2.0) -> None:
    """Append {t, weights, replica_targets, running, starting, in_flight, waiting} every `every_s` until `stop`:
    t in seconds from the start; weights / replica_targets from the policy actor's latest decision;
    running / starting: the replicas Serve reports per pool; in_flight / waiting: the ingress's counts."""
    import httpx
    from ray import serve

    def replicas() -> dict:
        deployments = serve.status().applications[app].deployments
        return {name.removeprefix("pool-"): {getattr(k, "value", str(k)): n for k, n in d.replica_states.items()}
                for name, d in deployments.items() if name.startswith("pool-")}

    start = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        while not stop.is_set():
            row = {"t": round(time.monotonic() - start, 1)}
            try:
                status = (await http.get("/v1/dsla/status")).json()
                decision = status["decisions"][0] if status["decisions"] else {}
                row.update(weights=decision.get("weights"), replica_targets=decision.get("replica_targets"),
                           in_flight=status["ingress"]["in_flight"], waiting=status["ingress"]["waiting"])
                states = await asyncio.to_thread(replicas)
                row.update(running={p: s.get("RUNNING", 0) for p, s in states.items()},
                           starting={p: sum(n for k, n in s.items() if k != "RUNNING") for p, s in states.items()})
            except Exception as e:  # noqa: BLE001 - a missed sample is recorded, the run goes on
                row["error"] = f"{type(e).__name__}: {e}"[:200]
            timeline.append(row)
            try:
                await asyncio.wait_for(stop.wait(), every_s)
            except asyncio.TimeoutError:
                pass


async def timed_run(url: str, app: str, **run_kwargs) -> tuple:
    """dsla_serve.bench.run.run_once with the app's timeline sampled alongside: (summary, timeline, load averages
    before and after)."""
    from dsla_serve.bench.run import run_once

    timeline, stop = [], asyncio.Event()
    load_before = os.getloadavg()
    sampler = asyncio.create_task(sample_timeline(url, app, timeline, stop))
    try:
        summary, _ = await run_once(**run_kwargs)
    finally:
        stop.set()
        await sampler
    return summary, timeline, (load_before, os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", required=True, help="a tiny:llama artifact with its layers' measured ppl ratios")
    parser.add_argument("--rates", default="2,4,6,8,10")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of arrivals per rate (at least 15 "
                                                                    "requests)")
    parser.add_argument("--max-requests", type=int, default=1000, help="most requests per rate")
    parser.add_argument("--burst", default="0.5,8", help="the burst trace's quiet and burst rates (requests/s)")
    parser.add_argument("--name", default="adaptive_cpu", help="the results' file names: NAME.json, NAME.png")
    parser.add_argument("--variants", default="adaptive,static-d0,static-deep")
    parser.add_argument("--corpus", default=str(REPO / "tests" / "data" / "alice_ch1-2.txt"))
    parser.add_argument("--output-dir", default=str(HERE / "results"))
    parser.add_argument("--port", type=int, default=8031)
    args = parser.parse_args()

    import ray
    import torch
    from ray import serve

    from dsla_serve.bench.arrivals import gamma
    from dsla_serve.bench.plot import plot_rates
    from dsla_serve.bench.report import table
    from dsla_serve.bench.run import BenchConfig, load_corpus, warm_up
    from dsla_serve.bench.workload import Lengths
    from dsla_serve.controller.app import application
    from dsla_serve.policies import SLO as SLOTargets
    from dsla_serve.policies import DepthQuality, Policy, explain_floor

    deep = explain_floor(Policy.model_validate(policy("static-deep", args.port, args.artifact, 99)),
                         DepthQuality.from_artifact_dir(args.artifact))[0]  # the floor: the deepest depth that passes
    rates = [float(r) for r in args.rates.split(",")]
    quiet, burst = (float(r) for r in args.burst.split(","))
    slo = SLOTargets(**SLO)
    record = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), "command": " ".join(sys.argv),
              "versions": {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__},
              "artifact": args.artifact, "deep": deep, "slo": SLO,
              "workload": {"prompt_tokens": PROMPT_TOKENS, "output_tokens": OUTPUT_TOKENS,
                           "requests_per_rate": f"max(15, min({args.max_requests}, {args.seconds:g} s x rate))",
                           "rates": rates, "arrivals": "poisson",
                           "burst_trace": {"quiet_rate": quiet, "burst_rate": burst, "phase_s": 20,
                                           "phases": "quiet, burst, quiet, burst, quiet"}},
              "variants": {}}
    summaries = []
    for variant in args.variants.split(","):
        data = policy(variant, args.port, args.artifact, deep)
        loaded = Policy.model_validate(data)
        entry = {"policy": data, "load_avg_before": os.getloadavg(), "runs": [], "trace": None, "timelines": {}}
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": args.port})
            serve.run(application(loaded, start_trainer=False), name=loaded.name, route_prefix="/",
                      external_scaler_enabled=True)
            url = f"http://127.0.0.1:{args.port}"
            config = BenchConfig(url=url, model="tiny-llama", prompt_tokens=Lengths.parse(PROMPT_TOKENS),
                                 output_tokens=Lengths.parse(OUTPUT_TOKENS), duration_s=240, timeout_s=180, seed=0)
            corpus = load_corpus(config, [args.corpus])

            async def measure():
                await warm_up(config, corpus, 3)
                for rate in rates:
                    count = max(15, min(args.max_requests, round(args.seconds * rate)))
                    summary, timeline, loads = await timed_run(
                        url, loaded.name, config=config, corpus=corpus, arrivals=gamma(rate, 1.0, count, seed=1),
                        label=variant, rate=rate, slo=slo)
                    print(table([summary]).splitlines()[-1], flush=True)
                    entry["runs"].append({**summary.to_dict(), "load_avg": loads})
                    entry["timelines"][f"{rate:g}"] = timeline
                    summaries.append(summary)
                    await asyncio.sleep(20)  # let the controller see the quiet (its window) before the next rate
                trace, timeline, loads = await timed_run(
                    url, loaded.name, config=config, corpus=corpus, arrivals=burst_trace(quiet, burst),
                    label=f"{variant} burst", rate=None, slo=slo)
                print(table([trace]).splitlines()[-1], flush=True)
                entry["trace"] = {**trace.to_dict(), "load_avg": loads}
                entry["timelines"]["burst"] = timeline

            asyncio.run(measure())
            status = json.loads(__import__("httpx").get(f"{url}/v1/dsla/status", timeout=30).text)
            entry["decisions"] = [d["reason"] for d in status["decisions"]][:50]
            entry["quality"] = status["quality"]
        finally:
            ray.shutdown()
        entry["load_avg_after"] = os.getloadavg()
        record["variants"][variant] = entry
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.name}.json").write_text(json.dumps(record, indent=1) + "\n")  # kept if a later variant fails
        time.sleep(5)
    plot_rates(summaries, out / f"{args.name}.png",
               title=f"tiny:llama, prompts 2-4k tokens, 2 CPU replicas: depth 0 / {deep} / adaptive")
    print(table(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
