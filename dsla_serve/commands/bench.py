"""`dsla-serve bench`: load an OpenAI-compatible endpoint and report what its clients get.

    dsla-serve bench --url http://127.0.0.1:8000 --corpus book.txt --rates 1,2,4,8 --num-requests 200 \
                     --policy policy.yaml --output bench.json --plot bench.png

The logic is `dsla_serve/bench/` (arrivals, workload, client, report, plot, run); this module reads
the options, runs one measurement per rate (or one trace replay) and writes the JSON and the PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import time

HELP = "load an OpenAI-compatible endpoint (Poisson, gamma bursts or a trace) and report TTFT/TPOT/E2E, SLO attainment, goodput"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Send streamed completions to an OpenAI-compatible endpoint (DSLA-Serve, vLLM, ...) at a request rate\n"
        "(Poisson or gamma arrivals, or a trace's timestamps), with prompts cut from a corpus to a length\n"
        "distribution, and report TTFT / TPOT / end-to-end percentiles, SLO attainment and goodput for a\n"
        "policy's targets, errors by kind and (DSLA-Serve) the mean depth that served. Bounded: at most\n"
        "--num-requests per rate, none sent after --duration seconds, none waiting past --timeout.")
    parser.epilog = ("examples:\n"
                     "  dsla-serve bench --policy examples/tiny-policy.yaml --corpus tests/data/alice_ch1-2.txt \\\n"
                     "      --rates 2,4,8 --num-requests 100 --output bench.json --plot bench.png\n"
                     "  dsla-serve bench --url http://vllm:8000 --model meta-llama/Llama-3.1-8B --corpus book.txt \\\n"
                     "      --trace burst.jsonl --ttft-ms 500 --tpot-ms 50")
    target = parser.add_argument_group("endpoint")
    target.add_argument("--url", default=None, help="the server's base URL (default: from --policy, else "
                                                    "http://127.0.0.1:8000)")
    target.add_argument("--model", default=None, help="the model to ask for (default: the first of /v1/models)")
    target.add_argument("--api-key", default=None, help="API key (default: $<--api-key-env>, the policy's "
                                                        "http.api_key_env, $DSLA_SERVE_API_KEY, $OPENAI_API_KEY)")
    target.add_argument("--api-key-env", default=None, metavar="NAME", help="the variable holding the API key")
    slo = parser.add_argument_group("SLO targets (per request)")
    slo.add_argument("--policy", default=None, help="take the SLO targets, URL and API key variable from this policy")
    slo.add_argument("--ttft-ms", type=float, default=None)
    slo.add_argument("--tpot-ms", type=float, default=None)
    slo.add_argument("--e2e-ms", type=float, default=None)
    load = parser.add_argument_group("load")
    load.add_argument("--corpus", nargs="+", required=True, help="text files prompts are cut from")
    load.add_argument("--prompt-tokens", default="lognormal:128:0.5",
                      help="prompt lengths: N, fixed:N, uniform:LOW:HIGH or lognormal:MEDIAN:SIGMA (default %(default)s)")
    load.add_argument("--output-tokens", default="uniform:16:64", help="output lengths, same forms (default %(default)s)")
    load.add_argument("--rates", default=None, help="requests/s, comma-separated: one measurement each")
    load.add_argument("--arrivals", choices=("poisson", "gamma"), default="poisson")
    load.add_argument("--cv", type=float, default=3.0, help="gamma arrivals' coefficient of variation (burstiness)")
    load.add_argument("--trace", default=None, help="replay a JSON-lines trace: {\"t\", \"prompt_tokens\", "
                                                    "\"output_tokens\"} per line (with --rates: rescaled to each rate)")
    load.add_argument("--num-requests", type=int, default=200, help="requests per rate (default %(default)s)")
    load.add_argument("--duration", type=float, default=300.0, help="no request is sent after this many seconds "
                                                                    "of a run (default %(default)s)")
    load.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take (default %(default)s)")
    load.add_argument("--warmup", type=int, default=2, help="requests sent one by one first, not measured")
    load.add_argument("--no-ignore-eos", action="store_true", help="do not send vLLM's ignore_eos (servers that refuse it)")
    load.add_argument("--seed", type=int, default=0)
    out = parser.add_argument_group("output")
    out.add_argument("--label", default="run", help="the name of this series in the JSON and the plot")
    out.add_argument("--output", default=None, help="write the results as JSON here")
    out.add_argument("--plot", default=None, help="write SLO attainment and goodput against rate as a PNG here")
    out.add_argument("--no-progress", action="store_true")


def _slo(args, policy):
    from ..policies import SLO

    base = policy.slo if policy is not None else None
    ttft = args.ttft_ms if args.ttft_ms is not None else (base.ttft_p95_ms if base else None)
    tpot = args.tpot_ms if args.tpot_ms is not None else (base.tpot_p95_ms if base else None)
    e2e = args.e2e_ms if args.e2e_ms is not None else (base.e2e_p95_ms if base else None)
    if ttft is None or tpot is None:
        return None
    return SLO(ttft_p95_ms=ttft, tpot_p95_ms=tpot, e2e_p95_ms=e2e)


def _first_model(url: str, key: str | None) -> str:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = httpx.get(f"{url}/v1/models", headers=headers, timeout=30).json()["data"]
    return data[0]["id"]


def run(args: argparse.Namespace) -> int:
    from ..bench.arrivals import gamma, read_trace, scaled
    from ..bench.plot import plot_rates
    from ..bench.report import table
    from ..bench.run import BenchConfig, load_corpus, run_once, warm_up
    from ..bench.workload import Lengths
    from .common import CommandError, fail, read_policy, url_of

    policy = None
    try:
        if args.policy:
            policy = read_policy(args.policy, check_paths=False)
        prompt_tokens, output_tokens = Lengths.parse(args.prompt_tokens), Lengths.parse(args.output_tokens)
        rates = [float(r) for r in args.rates.split(",")] if args.rates else []
    except (CommandError, ValueError) as e:
        return fail(str(e))
    if not rates and not args.trace:
        return fail("give --rates, --trace, or both")
    if any(r <= 0 for r in rates) or args.num_requests < 1 or args.duration <= 0:
        return fail("rates, --num-requests and --duration must be positive")
    url = (args.url or (url_of(policy) if policy else "http://127.0.0.1:8000")).rstrip("/")
    names = [n for n in (args.api_key_env, policy.http.api_key_env if policy else None,
                         "DSLA_SERVE_API_KEY", "OPENAI_API_KEY") if n]
    key = args.api_key or next((os.environ[n] for n in names if os.environ.get(n)), None)
    try:
        model = args.model or _first_model(url, key)
    except Exception as e:  # noqa: BLE001 - one line, not a traceback
        return fail(f"cannot read the models of {url}/v1/models (give --model): {type(e).__name__}: {e}")
    slo = _slo(args, policy)
    config = BenchConfig(url=url, model=model, prompt_tokens=prompt_tokens, output_tokens=output_tokens, api_key=key,
                         ignore_eos=not args.no_ignore_eos, duration_s=args.duration, timeout_s=args.timeout,
                         seed=args.seed)
    corpus = load_corpus(config, args.corpus)
    print(f"bench {url} model {model}: prompts {'as token ids' if corpus.ids else 'as text (no /tokenize)'} "
          f"of {prompt_tokens} tokens, outputs {output_tokens}; SLO "
          + (f"TTFT {slo.ttft_p95_ms:g} ms, TPOT {slo.tpot_p95_ms:g} ms" + (f", E2E {slo.e2e_p95_ms:g} ms"
                                                                            if slo.e2e_p95_ms else "") if slo else
             "none (give --policy or --ttft-ms/--tpot-ms)"), flush=True)
    trace = read_trace(args.trace) if args.trace else None
    plans = []
    for rate in rates:
        if trace is not None:
            plans.append((rate, scaled(trace, rate)[:args.num_requests]))
        else:
            cv = 1.0 if args.arrivals == "poisson" else args.cv
            plans.append((rate, gamma(rate, cv, args.num_requests, args.seed)))
    if trace is not None and not rates:
        plans.append((None, trace[:args.num_requests]))

    load_before = os.getloadavg()
    summaries = []

    async def measure():
        if args.warmup:
            await warm_up(config, corpus, args.warmup)
        for rate, arrivals in plans:
            summary, _ = await run_once(config, corpus, arrivals, label=args.label, rate=rate, slo=slo,
                                        progress=not args.no_progress)
            summaries.append(summary)
            print(table([summary]).splitlines()[-1], flush=True)

    began = time.time()
    try:
        asyncio.run(measure())
    except KeyboardInterrupt:
        print("interrupted: reporting the runs that finished", file=sys.stderr)
    print(table(summaries))
    if args.output:
        record = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(began)), "url": url, "model": model,
                  "label": args.label, "slo": slo.model_dump() if slo else None,
                  "arrivals": "trace" if trace is not None else args.arrivals,
                  "cv": args.cv if args.arrivals == "gamma" and trace is None else None, "trace": args.trace,
                  "prompt_tokens": str(prompt_tokens), "output_tokens": str(output_tokens),
                  "prompts_as": "token ids" if corpus.ids else "text", "num_requests": args.num_requests,
                  "duration_s": args.duration, "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
                  "python": platform.python_version(), "runs": [s.to_dict() for s in summaries]}
        with open(args.output, "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
    if args.plot:
        plot_rates(summaries, args.plot, title=f"{model} at {url}")
    return 0 if summaries and not math.isnan(summaries[-1].goodput) else 1
