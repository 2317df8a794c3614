"""The sweep of benchmarks/adaptive_gpu.py: every rate, then the burst trace, each served by every
variant (same requests), within a deadline; the JSON, the PNG, the table and the goals.

    record = sweep(args, source, env, deadline=time.monotonic() + 330)

`args` are adaptive_gpu.py's; `source` its `Source` (the model, its prompts' corpus, the deepest depth,
where quality comes from). Runs go rate by rate, the variants of a rate one after another, so that a
deadline cuts whole rates; a run whose `seconds + drain` would pass the deadline is skipped and listed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from dsla_serve.bench.arrivals import phases, poisson
from dsla_serve.bench.plot import plot_rates
from dsla_serve.bench.report import Summary, summarize, table
from dsla_serve.bench.workload import Corpus, Lengths, plan_requests
from dsla_serve.controller.control_plane.artifact_view import ArtifactView, read_artifact
from dsla_serve.controller.control_plane.control import PolicyControl
from dsla_serve.policies import DepthQuality, Policy

from .adaptive_fleet import EngineFactory, Fleet
from .adaptive_serve import serve

VARIANTS = ("adaptive", "static-d0", "static-deep")
GiB = 1024**3


def max_model_len(args) -> int:
    """The longest prompt plus output the length distributions can draw (fixed or uniform ones)."""
    total = 0
    for spec in (args.prompt_tokens, args.output_tokens):
        lengths = Lengths.parse(spec)
        if lengths.kind == "lognormal":
            raise SystemExit(f"{spec}: give fixed or uniform lengths here (the context limit is their maximum)")
        total += int(lengths.b if lengths.kind == "uniform" else lengths.a)
    return total


def build_policy(variant: str, args, slots: dict[int, int], *, artifact: str | None, deep: int, model_path=None):
    """The policy of one variant: same model, SLO, controller and limits; pools differ. slots: the
    sequences one replica admits at each depth (its pool's max_concurrent_requests)."""
    n = args.places
    share = {"num_cpus": 0.0, "num_gpus": 1.0 / n}  # `places` replicas fill the device: {"GPU": 1.0} in all

    def pool(name, depth, **replicas):
        return {"name": name, "depth": depth, "resources": share, "max_concurrent_requests": slots[depth], **replicas}

    if variant == "adaptive":
        pools = [pool("accurate", 0, min_replicas=0, max_replicas=n, initial_replicas=1),
                 pool("fast", deep, min_replicas=1, max_replicas=n, initial_replicas=1)]
    elif variant == "static-d0":
        pools = [pool("accurate", 0, min_replicas=n, max_replicas=n)]
    elif variant == "static-deep":
        pools = [pool("fast", deep, min_replicas=n, max_replicas=n)]
    else:
        raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    ttft, tpot, e2e = (float(x) for x in args.slo.split(","))
    longest = max_model_len(args)
    quality = ({"max_ppl_ratio": args.max_ppl_ratio} if artifact is not None
               else {"max_ppl_ratio": args.assumed_ppl_ratio, "max_depth": deep})
    data = {"name": variant.replace("-", "_"),
            # the engines are built over the in-memory model; the policy's model and (7b-shape) artifact
            # name it for the record and are never loaded from
            "model": {"path": model_path or "in-memory/model", "max_model_len": longest},
            "artifact": artifact or "in-memory-assumed-quality",
            "pools": pools, "slo": {"ttft_p95_ms": ttft, "tpot_p95_ms": tpot, "e2e_p95_ms": e2e},
            "quality": quality,
            "controller": {"interval_s": args.interval, "window_s": args.window, "cooldown_s": args.cooldown,
                           "hysteresis": 0.2, "min_samples": args.min_samples, "traffic_step": args.traffic_step},
            "http": {"max_prompt_tokens": longest - 1, "max_tokens_limit": longest - 1, "queue_cap": args.queue_cap}}
    return Policy.model_validate(data)


def quality_reader(source):
    """The artifact reader the policy control uses: the policy actor's own (`read_artifact`) for a real
    artifact; for assumed quality, one that offers depths 1..deep with the assumed ratios."""
    if source.artifact is not None:
        return read_artifact
    assumed = DepthQuality.from_ratios(source.assumed)
    return lambda path, previous=None: ArtifactView(path, assumed)


def workloads(args, corpus: Corpus) -> list[tuple[str, float | None, list, float]]:
    """(name, rate or None, planned requests, seconds) of every rate and of the burst trace."""
    prompt, output = Lengths.parse(args.prompt_tokens), Lengths.parse(args.output_tokens)
    out = []
    for rate in (float(r) for r in args.rates.split(",") if r.strip()):
        arrivals = poisson(rate, max(1, int(rate * args.seconds * 2) + 10), seed=args.seed + 1)
        out.append((f"{rate:g}", rate, plan_requests(arrivals, corpus, prompt, output, args.seed, args.seconds),
                    args.seconds))
    if args.burst:
        quiet, burst = (float(r) for r in args.burst.split(","))
        s = args.burst_phase_s
        arrivals = phases([(quiet, s), (burst, s), (quiet, s), (burst, s), (quiet, s)], seed=args.seed + 2)
        out.append(("burst", None, plan_requests(arrivals, corpus, prompt, output, args.seed), 5 * s))
    return out


def goals(summaries: list[Summary]) -> list[str]:
    """The issue's two goals, per rate and for the burst trace: adaptive goodput >= 2x static depth 0, and
    adaptive SLO attainment >= 90% where static depth 0's is below 50% (mean depths beside them)."""
    by = {(s.label.removesuffix(" burst"), s.rate if s.rate is not None else "burst"): s for s in summaries}
    lines = []
    for key in dict.fromkeys(k for _, k in by):
        a, d0 = by.get(("adaptive", key)), by.get(("static-d0", key))
        if a is None or d0 is None:
            continue
        ratio = a.goodput / d0.goodput if d0.goodput > 0 else float("inf")
        where = f"rate {key:g}/s" if key != "burst" else "burst trace"
        line = (f"{where}: goodput adaptive {a.goodput:.3f} vs static-d0 {d0.goodput:.3f} = {ratio:.2f}x "
                f"({'met' if ratio >= 2 else 'not met'}: >= 2x); mean depth {a.mean_depth} vs 0")
        if d0.attainment is not None and a.attainment is not None and d0.attainment < 0.5:
            line += (f"; attainment adaptive {a.attainment:.0%} where static-d0 {d0.attainment:.0%} "
                     f"({'met' if a.attainment >= 0.9 else 'not met'}: >= 90%)")
        lines.append(line)
    return lines


def _save(record: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")


def sweep(args, source, env: dict, deadline: float) -> dict:
    """Every run of the sweep; returns the record written to `<out>/<name>.json` (also the PNG, the table)."""
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    longest = max_model_len(args)
    factory = EngineFactory(source.model, longest, int(args.budget_gib * GiB), args.max_seqs, args.prefill_chunk,
                            seed=args.seed)
    slots = {0: factory.slots_at(0), source.deep: factory.slots_at(source.deep)}
    model_path = args.model if source.artifact is not None else None
    policies = {v: build_policy(v, args, slots, artifact=source.artifact, deep=source.deep, model_path=model_path)
                for v in variants}
    corpus = Corpus(source.corpus_ids, "")
    plans = workloads(args, corpus)
    out = Path(args.out)
    record = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv), "env": env,
              "model": source.label, "deep": source.deep, "quality": source.quality_note,
              "sizing": {"places": args.places, "budget_gib": args.budget_gib, "max_model_len": longest,
                         "sequences_per_replica": {f"depth {d}": n for d, n in slots.items()},
                         "prefill_chunk_tokens": args.prefill_chunk,
                         "weights": "one copy shared by every engine (each has its own cache, runner, graphs)"},
              "workload": {"prompt_tokens": args.prompt_tokens, "output_tokens": args.output_tokens,
                           "rates": [r for _, r, _, _ in plans if r is not None], "seconds": args.seconds,
                           "drain_s": args.drain, "arrivals": "poisson", "seed": args.seed,
                           "burst_trace": args.burst and {"quiet_and_burst": args.burst, "phase_s": args.burst_phase_s,
                                                          "phases": "quiet, burst, quiet, burst, quiet"}},
              "slo": dict(policies[variants[0]].slo.model_dump()),
              "policies": {v: p.model_dump(mode="json") for v, p in policies.items()},
              "runs": [], "skipped": [], "complete": True}
    print(f"{source.label}: depths 0 and {source.deep}; quality {source.quality_note}; {args.places} replicas of "
          f"{args.budget_gib:g} GiB cache: {slots[0]} sequences at depth 0, {slots[source.deep]} at depth "
          f"{source.deep}", flush=True)
    fleet = Fleet(factory, args.places)
    resources = {"GPU": 1.0}
    summaries: list[Summary] = []
    for name, rate, planned, seconds in plans:
        for variant in variants:
            label = variant if rate is not None else f"{variant} burst"
            if time.monotonic() + seconds + args.drain + 5 > deadline:
                record["skipped"].append({"variant": variant, "run": name, "why": "--timeout"})
                record["complete"] = False
                print(f"[skip] {label} @ {name}: --timeout", flush=True)
                continue
            policy = policies[variant]
            depths = {p.name: p.depth for p in policy.pools}
            fleet.arrange(policy, depths)
            control = PolicyControl(policy, time.monotonic(), artifact_reader=quality_reader(source))
            run = serve(fleet, policy, control, planned, label=label, rate=rate, seconds=seconds, drain_s=args.drain,
                        resources=resources, deadline=deadline, progress=not args.no_progress)
            summary = summarize(label, rate, run.results, policy.slo)
            summaries.append(summary)
            print(table([summary]).splitlines()[-1], flush=True)
            record["runs"].append({"variant": variant, "run": name, **summary.to_dict(), "wall_s": run.seconds,
                                   "cuda_graphs": run.cuda_graphs, "events": run.events, "decisions": run.decisions, "timeline": run.timeline})
            _save(record, out, args.name)
    record["goals"] = goals(summaries)
    _save(record, out, args.name)
    try:
        plot_rates(summaries, out / f"{args.name}.png", title=f"{source.label}: depth 0 / {source.deep} / adaptive, "
                   f"{args.places} replicas x {args.budget_gib:g} GiB")
    except ImportError as e:  # matplotlib is not in every image
        print(f"no PNG: {e}", flush=True)
    print(f"\n{source.label}; quality {source.quality_note}")
    print(table(summaries))
    print("\n".join(["", "goals:"] + record["goals"] + [f"skipped: {s['variant']} @ {s['run']}" for s in record["skipped"]]))
    return record
