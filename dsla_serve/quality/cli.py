"""`dsla-serve eval`: quality of a model, or of a DSLA artifact at several depths, as JSON and PNG plots."""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

HELP = "measure perplexity by position, passkey retrieval and associative recall of a model (at DSLA depths)"


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _buckets(text: str) -> tuple[tuple[int, int], ...]:
    edges = [int(x) for x in text.split(",")]
    if len(edges) < 2 or edges != sorted(set(edges)):
        raise argparse.ArgumentTypeError(f"bucket edges must rise strictly, e.g. 0,256,1024,4096; got {text!r}")
    return tuple(zip(edges[:-1], edges[1:]))


def _tasks(text: str) -> tuple[str, ...]:
    from .evaluate import TASKS

    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise argparse.ArgumentTypeError(f"unknown task(s) {bad or text!r}; choose from {','.join(TASKS)}")
    return tasks


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.description = (HELP + ". Perplexity windows and passkey filler come from held-out text (--data); "
                     "episodes are seeded, so every model and depth sees the same ones.")
    p.add_argument("--model", required=True, help="model folder, .gguf file, hub id, smollm2-135m (the reference "
                   "model), or tiny:llama (random, for a try)")
    p.add_argument("--artifact", default=None, help="DSLA artifact folder to apply (then --depths applies)")
    p.add_argument("--depths", default="all",
                   help="with --artifact: depths to measure, e.g. 0,4 or L/4,L/2,3L/4,L or all")
    p.add_argument("--data", required=True,
                   help="held-out text: a token corpus folder, a folder of .txt books (with --split), or a text file")
    p.add_argument("--split", default=None, help="book split JSON whose 'validation' books are used (books folder)")
    p.add_argument("--max-docs", type=int, default=None, help="at most this many documents")
    p.add_argument("--tasks", type=_tasks, default=("ppl", "passkey", "mqar"), help="ppl,passkey,mqar")
    p.add_argument("--context", type=int, default=4096, help="perplexity window length (tokens)")
    p.add_argument("--buckets", type=_buckets, default=((0, 256), (256, 1024), (1024, 4096)),
                   help="position bucket edges, e.g. 0,256,1024,4096")
    p.add_argument("--max-windows", type=int, default=64, help="perplexity windows (0 = all)")
    p.add_argument("--passkey-lengths", type=_ints, default=(1024, 2048, 4096), help="passkey episode lengths")
    p.add_argument("--passkey-episodes", type=int, default=50, help="episodes per passkey length")
    p.add_argument("--mqar-pairs", type=_ints, default=(16, 32, 64), help="key-value pairs per recall episode")
    p.add_argument("--mqar-episodes", type=int, default=50, help="episodes per recall size")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=1234, help="seed of the episodes")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16")
    p.add_argument("--out", required=True, help="output folder for results.json and the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def summary_lines(runs: list[dict]) -> list[str]:
    """A plain-text table: label, overall ppl, per-bucket ppl, passkey and recall accuracy."""
    lines = []
    for r in runs:
        parts = [f"{r['label']:>12}"]
        if "perplexity" in r:
            p = r["perplexity"]
            parts.append(f"ppl {p['overall']['ppl']:8.2f}")
            parts += [f"[{b['lo']},{b['hi']}) {b['ppl']:8.2f}" for b in p["buckets"]]
        if "passkey" in r:
            rows = r["passkey"]["rows"]
            parts.append("passkey " + " ".join(f"{x['length']}:{100 * x['accuracy']:.0f}%" for x in rows))
        if "mqar" in r:
            parts.append("mqar " + " ".join(f"{x['pairs']}:{100 * x['accuracy']:.0f}%" for x in r["mqar"]["rows"]))
        lines.append("  ".join(parts))
    return lines


def run(args) -> int:
    from ..model import set_depth
    from .corpus import load_documents
    from .evaluate import EvalSettings, evaluate
    from .models import load_for_eval, parse_depths
    from .plots import plot_eval_runs

    settings = EvalSettings(tasks=args.tasks, context=args.context, buckets=args.buckets,
                            max_windows=args.max_windows or None, batch_size=args.batch_size,
                            passkey_lengths=args.passkey_lengths, passkey_episodes=args.passkey_episodes,
                            recall_pairs=args.mqar_pairs, recall_episodes=args.mqar_episodes, seed=args.seed,
                            progress=not args.quiet)
    model, tokenizer, order = load_for_eval(args.model, args.artifact, args.dtype, args.device)
    depths = parse_depths(args.depths, len(order)) if args.artifact else [0]
    docs = load_documents(args.data, tokenizer, args.split, max_docs=args.max_docs, progress=not args.quiet)
    runs = []
    for depth in depths:
        if args.artifact:
            set_depth(model, depth)
        label = f"depth {depth}" if args.artifact else Path(args.model).name or args.model
        print(f"evaluating {label} ...", flush=True)
        result = evaluate(model, tokenizer, [d for _, d in docs], settings)
        runs.append({"label": label, "depth": depth, "converted_layers": order[:depth], **result})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "model": args.model, "artifact": args.artifact, "order": order,
        "data": {"path": str(args.data), "split": args.split, "documents": [n for n, _ in docs],
                 "tokens": int(sum(len(d) for _, d in docs))},
        "settings": settings.to_dict(), "device": str(next(model.parameters()).device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "runs": runs,
    }
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    plots = plot_eval_runs(runs, out)
    print("\n".join(summary_lines(runs)))
    print(f"wrote {out / 'results.json'} and {len(plots)} plots ({', '.join(p.name for p in plots)})")
    return 0
