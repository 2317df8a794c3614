"""Tables, plots and the issue's target checks from a campaign's saved results.

Reads `<out>/teacher/results.json` (the base model, depth 0), `<out>/runs/<name>/eval/results.json`
(`dsla-serve eval` of each run's artifact) and `<out>/runs/<name>/artifact/manifest.json` (the order,
and per layer the trainer's timings); writes `<out>/summary.md` (markdown tables ready for
docs/quality.md), `<out>/summary.json` (the same numbers and the targets) and PNG plots. Runs that did
not finish are listed as missing, never filled in.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from dsla_serve.quality.models import parse_depths
from dsla_serve.quality.plots import plot_by_depth

from .campaign import Campaign

# issue 19's targets, against the base model (depth 0)
HALF_PPL = 0.03  # at L/2: perplexity within 3%, overall and on the last position bucket
HALF_PASSKEY_POINTS = 5.0  # at L/2: passkey within 5 points at every length
THREE_QUARTER_PPL = 0.10  # at 3L/4: perplexity within 10%


def metrics(ev: dict) -> dict:
    """The headline numbers of one evaluation: ppl, bucket_ppl {lo-hi: ppl}, passkey {len: acc}, mqar {pairs: acc}."""
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


def load_results(out: Path) -> tuple[dict | None, dict]:
    """(teacher metrics or None, {run: {"evals": {depth: eval}, "manifest": manifest or None, "eval_meta"}})."""
    teacher_file = out / "teacher" / "results.json"
    teacher = None
    if teacher_file.is_file():
        teacher = metrics(json.loads(teacher_file.read_text())["runs"][0])
    runs = {}
    for folder in sorted((out / "runs").glob("*")) if (out / "runs").is_dir() else []:
        results, manifest = folder / "eval" / "results.json", folder / "artifact" / "manifest.json"
        evals, meta = {}, {}
        if results.is_file():
            raw = json.loads(results.read_text())
            evals = {str(r["depth"]): r for r in raw["runs"]}
            meta = {k: raw.get(k) for k in ("device", "dtype", "created", "order")}
        runs[folder.name] = {"evals": evals, "eval_meta": meta,
                             "manifest": json.loads(manifest.read_text()) if manifest.is_file() else None}
    return teacher, runs


def _label(campaign: Campaign, name: str) -> str:
    try:
        return campaign.run(name).label or name
    except KeyError:
        return name


def _table(teacher: dict | None, runs: dict, names: list[str], campaign: Campaign) -> list[str]:
    ref = teacher or {}
    sample = ref or next((metrics(ev) for n in names if n in runs for ev in runs[n]["evals"].values()), {})
    buckets, lengths, pairs = (list(sample.get(k, {})) for k in ("bucket_ppl", "passkey", "mqar"))
    head = ["run", "depth", "ppl", "vs depth 0"] + [f"ppl {b}" for b in buckets] + \
        [f"passkey {x}" for x in lengths] + [f"MQAR {x}" for x in pairs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label, depth, m):
        ratio = f"{100 * (m['ppl'] / ref['ppl'] - 1):+.1f}%" if ref.get("ppl") and "ppl" in m else "-"
        cells = [label, str(depth), f"{m['ppl']:.2f}" if "ppl" in m else "-", ratio]
        cells += [f"{m['bucket_ppl'][b]:.2f}" for b in buckets if b in m.get("bucket_ppl", {})]
        cells += [f"{100 * m['passkey'][x]:.0f}%" for x in lengths if x in m.get("passkey", {})]
        cells += [f"{100 * m['mqar'][x]:.0f}%" for x in pairs if x in m.get("mqar", {})]
        lines.append("| " + " | ".join(cells) + " |")

    if teacher:
        row("base model", 0, teacher)
    for n in names:
        if not runs.get(n, {}).get("evals"):
            lines.append(f"| {_label(campaign, n)} | not measured | | |")
            continue
        for d in sorted(int(x) for x in runs[n]["evals"]):
            row(_label(campaign, n), d, metrics(runs[n]["evals"][str(d)]))
    return lines


def distillation(runs: dict) -> dict:
    """{run: {layers, steps, tokens_per_step, tokens_per_s, tokens_per_s_steady, minutes_per_layer, minutes, order,
    method}} from the manifests (the trainer's own per-layer timings: tokens/s over the optimiser steps, and
    without each layer's first step where the manifests have it; seconds with validation)."""
    out = {}
    for name, r in runs.items():
        m = r["manifest"]
        if not m or not m["layers"]:
            continue
        layers = [e["metrics"] for e in m["layers"]]
        steps = layers[0]["steps"]
        # without each layer's first step: manifests written before the trainer recorded it lack the field
        steady = [x["train_tokens_per_s_steady"] for x in layers if x.get("train_tokens_per_s_steady")]
        out[name] = {"layers": len(layers), "steps": steps,
                     "tokens_per_step": round(layers[0]["train_tokens"] / max(steps, 1)),
                     "tokens_per_s": round(statistics.mean(x["train_tokens_per_s"] for x in layers)),
                     "tokens_per_s_steady": round(statistics.mean(steady)) if steady else None,
                     "minutes_per_layer": round(statistics.mean(x["seconds"] for x in layers) / 60, 2),
                     "minutes": round(sum(x["seconds"] for x in layers) / 60, 2),
                     "ppl_ratio_by_depth": [round(x["ppl_ratio"], 4) for x in layers],
                     "order": m["order"][:len(layers)], "method": m.get("metadata", {}).get("order", {}).get("method"),
                     "layer_kind": m.get("layer_kind", "dsla")}
    return out


def layer_costs(dist: dict) -> dict:
    """{run: {layer: cost}}: what each layer added in its run's chain, from the trainer's validation ratios
    r_n (converted model / depth-0 perplexity after n layers): cost of the n-th layer = r_n / r_(n-1) - 1
    (r_0 = 1). Layers converted late are costed with more layers before them; the ratios multiply."""
    out = {}
    for name, d in dist.items():
        ratios = [1.0] + d["ppl_ratio_by_depth"]
        out[name] = {layer: ratios[i + 1] / ratios[i] - 1 for i, layer in enumerate(d["order"])}
    return out


def _cost_table(costs: dict) -> list[str]:
    """One row per layer (in the longest run's order), one column per run with more than one layer."""
    names = [n for n, c in costs.items() if len(c) > 1]
    if not names:
        return []
    longest = max(names, key=lambda n: len(costs[n]))
    md = ["| layer | position | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for pos, layer in enumerate(costs[longest]):
        md.append(f"| {layer} | {pos + 1} | " + " | ".join(
            f"{100 * costs[n][layer]:+.1f}%" if layer in costs[n] else "" for n in names) + " |")
    md.append("| median | | " + " | ".join(f"{100 * statistics.median(costs[n].values()):+.1f}%" for n in names) + " |")
    return md


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation of x and y (ties get their mean rank)."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        r = np.empty(len(v))
        r[v.argsort(kind="stable")] = np.arange(len(v))
        for value in np.unique(v):
            r[v == value] = r[v == value].mean()
        return r
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def _spread(values: list[float]) -> float:
    return max(values) - min(values) if len(values) > 1 else 0.0


def check_targets(teacher: dict | None, runs: dict, campaign: Campaign, num_layers: int) -> list[dict]:
    """Issue 19's targets, each {target, run, status: met | missed | not measured, detail}."""
    out = []
    half, three_q = parse_depths("L/2", num_layers)[0], parse_depths("3L/4", num_layers)[0]

    def at(name: str, depth: int) -> dict | None:
        ev = runs.get(name, {}).get("evals", {}).get(str(depth))
        return metrics(ev) if ev else None

    def add(target: str, name: str, ok: bool | None, detail: str) -> None:
        out.append({"target": target, "run": name, "detail": detail,
                    "status": "not measured" if ok is None else "met" if ok else "missed"})

    for name in campaign.targets.dsla:
        m, m3 = at(name, half), at(name, three_q)
        if teacher is None or m is None:
            add(f"L/2 (depth {half}) perplexity within 3% of depth 0, overall and on the last bucket", name, None,
                "needs the base model's and this run's evaluation at L/2")
        else:
            last = list(teacher["bucket_ppl"])[-1]
            r_all, r_last = m["ppl"] / teacher["ppl"] - 1, m["bucket_ppl"][last] / teacher["bucket_ppl"][last] - 1
            add(f"L/2 (depth {half}) perplexity within 3% of depth 0, overall and on the {last} bucket", name,
                r_all <= HALF_PPL and r_last <= HALF_PPL,
                f"overall {m['ppl']:.3f} vs {teacher['ppl']:.3f} ({100 * r_all:+.2f}%); {last} "
                f"{m['bucket_ppl'][last]:.3f} vs {teacher['bucket_ppl'][last]:.3f} ({100 * r_last:+.2f}%)")
            gaps = {x: 100 * (teacher["passkey"][x] - m["passkey"][x]) for x in teacher.get("passkey", {})}
            add(f"L/2 passkey within {HALF_PASSKEY_POINTS:.0f} points of depth 0 at every length", name,
                all(g <= HALF_PASSKEY_POINTS for g in gaps.values()) if gaps else None,
                "; ".join(f"{x}: {100 * m['passkey'][x]:.0f}% vs {100 * teacher['passkey'][x]:.0f}% ({-g:+.0f} points)"
                          for x, g in gaps.items()))
        if teacher is not None and m3 is not None:
            r3 = m3["ppl"] / teacher["ppl"] - 1
            add(f"3L/4 (depth {three_q}) perplexity within 10% of depth 0", name, r3 <= THREE_QUARTER_PPL,
                f"{m3['ppl']:.3f} vs {teacher['ppl']:.3f} ({100 * r3:+.2f}%)")
    dsla, single = campaign.targets.dsla, campaign.targets.single
    for depth in (half, three_q):
        a = [at(n, depth) for n in dsla]
        b = [at(n, depth) for n in single]
        if not dsla or not single or any(x is None for x in a + b) or teacher is None:
            if depth == half:
                add(f"DSLA better than one state at depth {depth} beyond the seed spread", ",".join(dsla + single),
                    None, "needs every DSLA and single-state run evaluated at this depth")
            continue
        last = list(teacher["bucket_ppl"])[-1]
        pa, pb = [x["bucket_ppl"][last] for x in a], [x["bucket_ppl"][last] for x in b]
        ka, kb = ([100 * statistics.mean(x["passkey"].values()) for x in xs] for xs in (a, b))
        spread, k_spread = max(_spread(pa), _spread(pb)), max(_spread(ka), _spread(kb))
        gap, k_gap = statistics.mean(pb) - statistics.mean(pa), statistics.mean(ka) - statistics.mean(kb)
        add(f"DSLA better than one state at depth {depth} beyond the seed spread (ppl {last})", ",".join(dsla + single),
            gap > spread, f"ppl {last}: DSLA {', '.join(f'{x:.3f}' for x in pa)} vs one state "
            f"{', '.join(f'{x:.3f}' for x in pb)}: DSLA ahead by {gap:+.3f}, seed spread {spread:.3f}; mean passkey "
            f"DSLA {', '.join(f'{x:.1f}' for x in ka)}% vs {', '.join(f'{x:.1f}' for x in kb)}%: "
            f"{k_gap:+.1f} points, spread {k_spread:.1f}")
    return out


def _plots(key: str, names: list[str], runs: dict, campaign: Campaign, teacher: dict, out: Path) -> list[Path]:
    """Overall and last-bucket perplexity, passkey at the longest length, MQAR at the most pairs, by depth."""
    def series(value) -> dict:
        s = {}
        for n in names:
            evals = runs.get(n, {}).get("evals", {})
            if evals:
                depths = sorted(int(d) for d in evals)
                s[_label(campaign, n)] = (depths, [value(metrics(evals[str(d)])) for d in depths])
        return s

    if not series(lambda m: 0.0):
        return []
    last = list(teacher["bucket_ppl"])[-1]
    title = campaign.experiments[key].title
    plots = [plot_by_depth(series(lambda m: m["ppl"]), out / f"{key}_ppl.png", "perplexity", title, teacher["ppl"],
                           "depth 0"),
             plot_by_depth(series(lambda m: m["bucket_ppl"][last]), out / f"{key}_long_ppl.png",
                           f"perplexity, positions {last}", title, teacher["bucket_ppl"][last], "depth 0")]
    for task, name in (("passkey", "passkey accuracy at {} tokens (%)"), ("mqar", "MQAR accuracy with {} pairs (%)")):
        if task in teacher:
            x = max(teacher[task], key=int)
            plots.append(plot_by_depth(series(lambda m: 100 * m[task][x]), out / f"{key}_{task}.png", name.format(x),
                                       title, 100 * teacher[task][x], "depth 0"))
    return plots


def write_report(campaign: Campaign, out: Path) -> Path:
    teacher, runs = load_results(out)
    driver = json.loads((out / "driver.json").read_text()) if (out / "driver.json").is_file() else {}
    num_layers = driver.get("num_layers") or max((len(r["manifest"]["order"]) for r in runs.values()
                                                  if r["manifest"]), default=0)
    dist = distillation(runs)
    md = ["# Campaign results", "", f"Base model `{campaign.base_model}` ({num_layers} layers)."]
    meta = next((r["eval_meta"] for r in runs.values() if r["eval_meta"]), {})
    if meta:
        md += [f"Evaluated on {meta.get('device')} in {meta.get('dtype')}, {meta.get('created')}."]
    md += ["", "## Targets", "", "| target | run | status | detail |", "|---|---|---|---|"]
    targets = check_targets(teacher, runs, campaign, num_layers) if num_layers else []
    md += [f"| {t['target']} | {t['run']} | {t['status']} | {t['detail']} |" for t in targets] + [""]
    md += ["## Distillation", "", "| run | kind | order | layers | steps / layer | tokens / step | tokens/s | "
           "tokens/s after step 1 | min / layer | min | ppl ratio by depth (trainer's validation) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, d in dist.items():
        md.append(f"| {name} | {d['layer_kind']} | {d['method']} {d['order']} | {d['layers']} | {d['steps']} | "
                  f"{d['tokens_per_step']} | {d['tokens_per_s']} | {d['tokens_per_s_steady'] or '-'} | "
                  f"{d['minutes_per_layer']} | {d['minutes']} | "
                  f"{', '.join(map(str, d['ppl_ratio_by_depth']))} |")
    costs = layer_costs(dist)
    table = _cost_table(costs)
    if table:
        md += ["", "What each layer cost where its run converted it (trainer's validation perplexity ratio after the "
               "layer / before it, minus 1):", ""] + table
    notes = {n: r.get("note") for n, r in driver.get("runs", {}).items() if r.get("note")}
    md += [""] + [f"- `{n}`: {note}" for n, note in notes.items()] + [""]
    summary = {"base_model": campaign.base_model, "num_layers": num_layers, "teacher": teacher, "targets": targets,
               "distillation": dist, "layer_costs": {n: {str(k): round(v, 5) for k, v in c.items()}
                                                     for n, c in costs.items()},
               "experiments": {}, "notes": notes}
    for key, exp in campaign.experiments.items():
        md += [f"## {key}: {exp.title}", "", exp.question, ""] + _table(teacher, runs, exp.runs, campaign) + [""]
        summary["experiments"][key] = {n: {d: metrics(ev) for d, ev in runs[n]["evals"].items()}
                                       if runs.get(n, {}).get("evals") else "not measured" for n in exp.runs}
        if teacher:
            md += [f"![{p.stem}]({p.name})" for p in _plots(key, exp.runs, runs, campaign, teacher, out)] + [""]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return out / "summary.md"
