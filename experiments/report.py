"""Tables, plots and the issue's target checks from the saved results of the quality experiments.

Reads <out>/teacher.json, <out>/orders.json and <out>/runs/*.json; writes <out>/summary.md (markdown
tables ready for docs/quality.md), <out>/summary.json (the same numbers and the targets) and PNGs.
Runs that are not done yet are listed as missing, never filled in.
"""

from __future__ import annotations

import json
from pathlib import Path

from dsla_serve.quality.plots import plot_accuracy, plot_by_depth, plot_position_curves

from .config import QualityConfig

PPL_TARGET_RATIO = 1.05  # DSLA at L/2 within 5% of the teacher's validation perplexity
PASSKEY_TARGET = 0.90  # passkey accuracy at 4k for DSLA at L/2


def metrics(ev: dict) -> dict:
    """The headline numbers of one evaluation result."""
    out = {}
    if "perplexity" in ev:
        p = ev["perplexity"]
        out["ppl"] = p["overall"]["ppl"]
        out["bucket_ppl"] = {f"{b['lo']}-{b['hi']}": b["ppl"] for b in p["buckets"]}
    if "passkey" in ev:
        out["passkey"] = {str(r["length"]): r["accuracy"] for r in ev["passkey"]["rows"]}
    if "mqar" in ev:
        out["mqar"] = {str(r["pairs"]): r["accuracy"] for r in ev["mqar"]["rows"]}
    return out


def _load(out: Path):
    teacher = json.loads((out / "teacher.json").read_text()) if (out / "teacher.json").is_file() else None
    runs = {p.stem: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))} \
        if (out / "runs").is_dir() else {}
    orders = json.loads((out / "orders.json").read_text()) if (out / "orders.json").is_file() else {}
    return teacher, runs, orders


def _series(runs: dict, names, labels: dict, value) -> dict:
    series = {}
    for n in names:
        if n in runs:
            depths = sorted(int(d) for d in runs[n]["evals"])
            ys = [value(metrics(runs[n]["evals"][str(d)])) for d in depths]
            series[labels.get(n) or n] = (depths, ys)
    return series


def _table(teacher_m: dict | None, runs: dict, names, labels: dict) -> list[str]:
    ref = teacher_m or {}
    sample = ref or next((metrics(ev) for n in names if n in runs for ev in runs[n]["evals"].values()), {})
    buckets, lengths, pairs = (list(sample.get(k, {})) for k in ("bucket_ppl", "passkey", "mqar"))
    head = ["run", "depth", "ppl", "vs teacher"] + [f"ppl {b}" for b in buckets] + \
        [f"passkey {x}" for x in lengths] + [f"MQAR {x}" for x in pairs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label, depth, m):
        ratio = f"{100 * (m['ppl'] / ref['ppl'] - 1):+.1f}%" if ref.get("ppl") and "ppl" in m else "-"
        cells = [label, str(depth), f"{m['ppl']:.2f}" if "ppl" in m else "-", ratio]
        cells += [f"{m['bucket_ppl'][b]:.2f}" for b in buckets if b in m.get("bucket_ppl", {})]
        cells += [f"{100 * m['passkey'][x]:.0f}%" for x in lengths if x in m.get("passkey", {})]
        cells += [f"{100 * m['mqar'][x]:.0f}%" for x in pairs if x in m.get("mqar", {})]
        lines.append("| " + " | ".join(cells) + " |")

    if teacher_m:
        row("teacher", 0, teacher_m)
    for n in names:
        if n not in runs:
            lines.append(f"| {labels.get(n) or n} | not yet run | | |")
            continue
        for d in sorted(int(x) for x in runs[n]["evals"]):
            row(labels.get(n) or n, d, metrics(runs[n]["evals"][str(d)]))
    return lines


def _experiment_plots(key: str, exp, runs: dict, done: list[str], labels: dict, ref: dict, out: Path) -> list[Path]:
    """Overall ppl, last-bucket ppl, passkey at the longest length and MQAR at the most pairs, vs depth.
    `ref` holds the teacher's metrics (drawn as a line) or is empty."""
    sample = ref or metrics(next(iter(runs[done[0]]["evals"].values())))
    last_bucket = list(sample["bucket_ppl"])[-1]
    plots = [
        plot_by_depth(_series(runs, exp.runs, labels, lambda m: m["ppl"]), out / f"{key}_ppl.png",
                      "validation perplexity", exp.title, ref.get("ppl")),
        plot_by_depth(_series(runs, exp.runs, labels, lambda m: m["bucket_ppl"][last_bucket]),
                      out / f"{key}_long_ppl.png", f"perplexity, positions {last_bucket}", exp.title,
                      ref.get("bucket_ppl", {}).get(last_bucket)),
    ]
    for task, unit, name in (("passkey", "tokens", "passkey accuracy at {} tokens (%)"),
                             ("mqar", "pairs", "MQAR accuracy with {} pairs (%)")):
        if task in sample:
            x = max(sample[task], key=int)
            plots.append(plot_by_depth(_series(runs, exp.runs, labels, lambda m: 100 * m[task][x]),
                                       out / f"{key}_{task}.png", name.format(x), exp.title,
                                       100 * ref[task][x] if task in ref else None))
    return plots


def check_targets(teacher_m: dict | None, runs: dict, num_layers: int | None, dsla_run: str = "dsla",
                  gla_run: str = "gla") -> list[dict]:
    """The issue's targets, each {target, status: met | missed | not measured, detail}, for DSLA run
    `dsla_run` against single-state run `gla_run`."""
    out = []
    dsla, gla = runs.get(dsla_run), runs.get(gla_run)
    half = str(num_layers // 2) if num_layers else None

    def at(run, depth):
        return metrics(run["evals"][depth]) if run and depth in run["evals"] else None

    m_half = at(dsla, half) if half else None
    if teacher_m and m_half:
        ratio = m_half["ppl"] / teacher_m["ppl"]
        out.append({"target": "DSLA at L/2 within 5% of the teacher's validation perplexity",
                    "status": "met" if ratio <= PPL_TARGET_RATIO else "missed",
                    "detail": f"ppl {m_half['ppl']:.3f} vs teacher {teacher_m['ppl']:.3f}: {100 * (ratio - 1):+.2f}%"})
    else:
        out.append({"target": "DSLA at L/2 within 5% of the teacher's validation perplexity", "status": "not measured",
                    "detail": f"needs teacher.json and runs/{dsla_run}.json"})
    if dsla and gla and num_layers:
        rows, ok = [], True
        for d in sorted({int(x) for x in dsla["evals"]} & {int(x) for x in gla["evals"]}):
            if d < num_layers // 2:
                continue
            a, b = at(dsla, str(d)), at(gla, str(d))
            last = list(a["bucket_ppl"])[-1]
            pk_a, pk_b = (sum(m["passkey"].values()) / len(m["passkey"]) for m in (a, b))
            better = a["bucket_ppl"][last] < b["bucket_ppl"][last] and pk_a > pk_b
            ok &= better
            rows.append(f"depth {d}: ppl {last} {a['bucket_ppl'][last]:.3f} vs {b['bucket_ppl'][last]:.3f}, "
                        f"mean passkey {100 * pk_a:.0f}% vs {100 * pk_b:.0f}%")
        out.append({"target": "DSLA better than the single state at every depth >= L/2 on the last position "
                              "bucket and on passkey", "status": "met" if ok and rows else "missed",
                    "detail": "; ".join(rows)})
    else:
        out.append({"target": "DSLA better than the single state at every depth >= L/2", "status": "not measured",
                    "detail": "needs " + " and ".join(f"runs/{n}.json" for n in (dsla_run, gla_run) if n not in runs)
                              if num_layers else "needs teacher.json"})
    if m_half and m_half.get("passkey"):
        longest = max(m_half["passkey"], key=int)
        acc = m_half["passkey"][longest]
        out.append({"target": f"passkey accuracy >= 90% at {longest} tokens for DSLA at L/2",
                    "status": "met" if acc >= PASSKEY_TARGET else "missed", "detail": f"{100 * acc:.0f}%"})
    else:
        out.append({"target": "passkey accuracy >= 90% at 4k for DSLA at L/2", "status": "not measured", "detail": ""})
    return out


def write_report(cfg: QualityConfig, out: Path) -> Path:
    teacher, runs, orders = _load(out)
    teacher_m = metrics(teacher["eval"]) if teacher else None
    num_layers = (teacher or {}).get("meta", {}).get("num_layers")
    labels = {r.name: r.label for r in cfg.runs}
    md = ["# Quality experiments: results", ""]
    if teacher:
        md += [f"Teacher `{teacher['meta']['teacher']}` ({num_layers} layers) on {teacher['meta']['device']}"
               f" ({teacher['meta'].get('gpu') or 'cpu'}), torch {teacher['meta']['torch']}.", ""]
    md += ["## Targets", ""]
    pairs = []
    for pair in cfg.targets:  # the first pair's are the summary's "targets"
        checked = check_targets(teacher_m, runs, num_layers, pair.dsla, pair.single)
        pairs.append({"label": pair.label, "dsla": pair.dsla, "single": pair.single, "targets": checked})
        md += [f"{pair.label} (`{pair.dsla}` vs `{pair.single}`):", "", "| target | status | detail |", "|---|---|---|"]
        md += [f"| {t['target']} | {t['status']} | {t['detail']} |" for t in checked] + [""]
    md += ["## Orders", ""] + [f"- `{k}`: {v['order']}" for k, v in orders.items()] + [""]
    summary = {"teacher": teacher_m, "targets": pairs[0]["targets"], "target_pairs": pairs, "orders": orders,
               "experiments": {}}
    for key, exp in cfg.experiments.items():
        md += [f"## {key}: {exp.title}", "", exp.question, ""] + _table(teacher_m, runs, exp.runs, labels) + [""]
        done = [n for n in exp.runs if n in runs]
        summary["experiments"][key] = {n: {d: metrics(ev) for d, ev in runs[n]["evals"].items()} for n in done}
        summary["experiments"][key].update({n: "not yet run" for n in exp.runs if n not in runs})
        if not done:
            continue
        plots = _experiment_plots(key, exp, runs, done, labels, teacher_m or {}, out)
        md += [f"![{p.stem}]({p.name})" for p in plots] + [""]
    if "dsla" in runs and teacher:
        curves = {"teacher": teacher["eval"]["perplexity"]["curve"]} if "perplexity" in teacher["eval"] else {}
        curves.update({f"DSLA depth {d}": ev["perplexity"]["curve"] for d, ev in sorted(
            runs["dsla"]["evals"].items(), key=lambda kv: int(kv[0])) if "perplexity" in ev})
        if curves:
            p = plot_position_curves(curves, out / "dsla_position.png", "DSLA: loss by token position")
            md += ["## DSLA: loss by position", "", f"![{p.stem}]({p.name})", ""]
        if "passkey" in teacher["eval"]:
            series = {"teacher": ([int(x) for x in teacher_m["passkey"]], list(teacher_m["passkey"].values()))}
            for d, ev in sorted(runs["dsla"]["evals"].items(), key=lambda kv: int(kv[0])):
                m = metrics(ev)
                series[f"DSLA depth {d}"] = ([int(x) for x in m["passkey"]], list(m["passkey"].values()))
            p = plot_accuracy(series, out / "dsla_passkey_lengths.png", "context length (tokens)",
                              "DSLA: passkey retrieval by length", log_x=True)
            md += [f"![{p.stem}]({p.name})", ""]
    md += ["## Run times", "", "| run | layers | seconds |", "|---|---|---|"]
    md += [f"| {n} | {len(r['layers'])} | {r['seconds']} |" for n, r in runs.items()]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return out / "summary.md"
