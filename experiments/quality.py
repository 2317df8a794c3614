"""Quality experiments 1-4 (issue 7) end to end on a trained teacher: chained conversions, evaluation,
tables and plots.

    python -m experiments.quality --teacher runs/teacher/model --data runs/teacher/data --out runs/quality
    python -m experiments.quality ... --experiments 2_baselines      # only the runs of one experiment
    python -m experiments.quality --out runs/quality --report-only   # tables and plots from saved results
    python -m experiments.quality --smoke ...                        # tiny settings for a CPU check
    python -m experiments.quality ... --workers 4                    # runs in 4 processes (one GPU)

Each run (a chained conversion: layer kind, order, gate settings) is written to <out>/runs/<name>.json
when it completes, and skipped when the command is repeated, so a long campaign is split over
several commands: with --time-budget-min a command starts no run it does not expect to finish in
time, and exits with code 75 while runs remain. Orders are computed once (<out>/orders.json); the
teacher is evaluated once (<out>/teacher.json). With --workers N the teacher and the orders are done
first, then the runs are shared among N processes: the model is small enough that one process
leaves a GPU mostly idle between its kernel launches. Every command ends by (re)writing the report:
<out>/summary.md, <out>/summary.json (with the issue's targets checked) and the PNG plots.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dsla_serve.model import DSLAConfig, set_depth
from dsla_serve.quality.corpus import open_token_corpus
from dsla_serve.quality.evaluate import evaluate
from dsla_serve.quality.models import resolve_device
from dsla_serve.quality.perplexity import windows_of
from recipes.teacher.batches import BatchMixture

from .config import FitSettings, QualityConfig, RunSpec, load_config
from .conversion import (autocast, convert_layer, entropy_order, fit_layer, loss_delta_order, simple_order,
                         validation)
from .report import write_report

CONFIGS = Path(__file__).resolve().parent / "configs"
EXIT_INCOMPLETE = 75


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", type=Path, help="teacher model folder (Hugging Face format)")
    p.add_argument("--data", type=Path, help="token corpus folder made with the teacher's tokenizer")
    p.add_argument("--out", type=Path, required=True, help="results folder (resumed when it exists)")
    p.add_argument("--config", type=Path, default=None, help="experiment config JSON (default: configs/quality.json)")
    p.add_argument("--experiments", default=None, help="comma list of experiments to run (default: all)")
    p.add_argument("--runs", default=None, help="comma list of runs to run (default: those of --experiments)")
    p.add_argument("--time-budget-min", type=float, default=None,
                   help="start no run expected to end after this many minutes of this command")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report from saved results")
    p.add_argument("--smoke", action="store_true", help="tiny settings (configs/quality-smoke.json) for a CPU check")
    p.add_argument("--workers", type=int, default=1, help="processes that share the runs (default: 1)")
    return p


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(path)


class Campaign:
    """The teacher, data and settings shared by every run, and the run loop."""

    def __init__(self, cfg: QualityConfig, teacher_dir: Path, data_dir: Path, out: Path, device: torch.device):
        from dsla_serve.model.loading import load_model_and_tokenizer

        self.cfg, self.out, self.device = cfg, out, device
        self.teacher, self.tokenizer = load_model_and_tokenizer(str(teacher_dir), dtype="float32", device=device)
        self.teacher.requires_grad_(False)
        self.num_layers = self.teacher.config.num_hidden_layers
        self.corpus = corpus = open_token_corpus(data_dir, self.tokenizer)
        self.val_docs = [d for _, d in corpus.docs("validation")]
        d = cfg.distill
        self._mixtures: dict[int, BatchMixture] = {}
        wins = windows_of(self.val_docs, d.mixture.seq_len, d.validation_windows)
        if not wins:
            raise ValueError(f"no validation document has {d.mixture.seq_len} tokens (distill.seq_len)")
        self.val_seqs = torch.as_tensor(np.stack(wins).astype(np.int64))
        self.meta = {"teacher": str(teacher_dir), "data": str(data_dir), "device": str(device),
                     "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                     "torch": torch.__version__, "num_layers": self.num_layers}

    def batches(self, step: int, run_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids [B, T], answers [B, T] bool) of distillation step `step`, for a run of seed
        `run_seed` (the distill section's seed + run_seed)."""
        if run_seed not in self._mixtures:
            mixture = dataclasses.replace(self.cfg.distill.mixture, seed=self.cfg.distill.mixture.seed + run_seed)
            self._mixtures[run_seed] = BatchMixture(self.tokenizer, self.corpus.stream("train"),
                                                    [x for _, x in self.corpus.docs("train")], mixture)
        ids, _, answers = self._mixtures[run_seed].batch(step)
        return ids, answers

    def held_out_episodes(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`n` batches of the distillation mixture built from the validation books instead of the
        training ones: (input_ids [B, T], answers [B, T] bool)."""
        mixture = BatchMixture(self.tokenizer, self.corpus.stream("validation"), self.val_docs, self.cfg.distill.mixture)
        return [(ids, answers) for ids, _, answers in map(mixture.batch, range(n))]

    def fit_settings(self, run: RunSpec | None = None, steps: int | None = None) -> FitSettings:
        fit = self.cfg.distill.fit
        qkvo = fit.train_qkvo if run is None or run.train_qkvo is None else run.train_qkvo
        loss = fit.loss if run is None or run.loss_answer_kl is None else \
            dataclasses.replace(fit.loss, answer_kl=run.loss_answer_kl)
        steps = steps or (run.steps if run is not None else None) or fit.steps
        return dataclasses.replace(fit, steps=steps, train_qkvo=qkvo, loss=loss)

    def evaluate(self, model) -> dict:
        with autocast(self.device):
            return evaluate(model, self.tokenizer, self.val_docs, dataclasses.replace(self.cfg.eval, progress=False))

    # --- shared results ------------------------------------------------------------------------
    def teacher_result(self) -> dict:
        path = self.out / "teacher.json"
        if not path.is_file():
            print("evaluating the teacher ...", flush=True)
            _write_json(path, {"meta": self.meta, "eval": self.evaluate(self.teacher)})
        return json.loads(path.read_text())

    def order(self, method: str) -> list[int]:
        path = self.out / "orders.json"
        orders = json.loads(path.read_text()) if path.is_file() else {}
        if method not in orders:
            t0 = time.perf_counter()
            o, scores = self._compute_order(method)
            orders[method] = {"order": o, "scores": {str(k): v for k, v in scores.items()},
                              "seconds": round(time.perf_counter() - t0, 1)}
            _write_json(path, orders)
            print(f"order {method}: {o}", flush=True)
        return orders[method]["order"]

    def _compute_order(self, method: str):
        oc = self.cfg.order
        if method == "entropy":
            wins = windows_of(self.val_docs, oc.calibration_len, oc.calibration_sequences)
            calib = torch.as_tensor(np.stack(wins).astype(np.int64))
            return entropy_order(self.teacher, calib, self.device)
        if method in ("loss_delta", "retrieval_delta"):
            # probes use the default DSLA layer, so every run shares one measured order
            episodes = self.held_out_episodes(oc.answer_batches) if method == "retrieval_delta" else None
            return loss_delta_order(self.teacher, self.batches, self.val_seqs, self.fit_settings(steps=oc.probe_steps),
                                    DSLAConfig(), self.device, seed=self.cfg.distill.mixture.seed, episodes=episodes)
        return simple_order(method, self.num_layers, oc.random_seed), {}

    # --- one run -------------------------------------------------------------------------------
    def run(self, spec: RunSpec) -> dict:
        from tqdm.auto import tqdm

        chain, eval_depths = spec.depths(self.num_layers)
        order = self.order(spec.order)
        config, settings = spec.dsla_config(), self.fit_settings(spec)
        model = copy.deepcopy(self.teacher)
        result = {"spec": {**spec.__dict__, "eval_depths": list(spec.eval_depths)}, "kind": spec.kind,
                  "order": order[:chain], "dsla_config": config.to_dict(), "fit": dataclasses.asdict(settings),
                  "layers": [], "evals": {}, "meta": self.meta}
        t_run = time.perf_counter()
        for rank in range(chain):
            layer, depth, t0 = order[rank], rank + 1, time.perf_counter()
            convert_layer(model, layer, spec.kind, config, seed=(self.cfg.distill.mixture.seed + spec.seed) * 1000 + rank)
            bar = tqdm(total=settings.steps, desc=f"{spec.name} depth {depth} (layer {layer})", unit="step",
                       mininterval=10)
            losses = fit_layer(model, layer, depth, lambda step: self.batches(step, spec.seed), rank * settings.steps,
                               settings, self.device,
                               progress=lambda s, loss: (bar.set_postfix(loss=f"{loss:.4f}", refresh=False),
                                                         bar.update(1)))
            bar.close()
            val = validation(model, depth, layer, self.val_seqs, settings.loss, self.device)
            result["layers"].append({"rank": rank, "layer": layer, "first_loss": losses[0] if losses else None,
                                     "last_loss": losses[-1] if losses else None,
                                     "losses": losses[::max(1, len(losses) // 50)], "validation": val,
                                     "seconds": round(time.perf_counter() - t0, 1)})
            print(f"{spec.name}: depth {depth} layer {layer}: val ppl ratio {val['ppl_ratio']:.4f}, "
                  f"kl {val['kl']:.4f}", flush=True)
            if depth in eval_depths:
                set_depth(model, depth)
                result["evals"][str(depth)] = self.evaluate(model)
        result["seconds"] = round(time.perf_counter() - t_run, 1)
        result["complete"] = True
        return result


def selected_runs(cfg: QualityConfig, experiments: str | None, runs: str | None) -> list[RunSpec]:
    if runs:
        return [cfg.run(n.strip()) for n in runs.split(",") if n.strip()]
    names = [e.strip() for e in experiments.split(",")] if experiments else list(cfg.experiments)
    unknown = [n for n in names if n not in cfg.experiments]
    if unknown:
        raise SystemExit(f"unknown experiment(s) {unknown}; the config has {list(cfg.experiments)}")
    wanted = []
    for n in names:
        wanted += [r for r in cfg.experiments[n].runs if r not in wanted]
    return [cfg.run(n) for n in wanted]


def share_runs(runs: list[RunSpec], num_layers: int, workers: int) -> list[list[RunSpec]]:
    """Runs dealt to `workers` groups, longest chains first, each to the least loaded group."""
    groups: list[list[RunSpec]] = [[] for _ in range(min(workers, len(runs)))]
    load = [0] * len(groups)
    for spec in sorted(runs, key=lambda r: -r.depths(num_layers)[0]):
        i = load.index(min(load))
        groups[i].append(spec)
        load[i] += spec.depths(num_layers)[0]
    return groups


def run_in_workers(args, campaign: Campaign, todo: list[RunSpec], t_start: float) -> None:
    """Run `todo` in --workers child processes of this command (a run a worker left undone, for its
    time budget, has no result file afterwards); raises if a worker failed."""
    import subprocess

    for method in dict.fromkeys(r.order for r in todo):
        campaign.order(method)  # before the workers start, so that none of them computes one
    children = []
    for group in share_runs(todo, campaign.num_layers, args.workers):
        cmd = [sys.executable, "-m", "experiments.quality", "--out", str(args.out), "--teacher", str(args.teacher),
               "--data", str(args.data), "--device", args.device, "--runs", ",".join(r.name for r in group)]
        if args.config or args.smoke:
            cmd += ["--config", str(args.config or CONFIGS / "quality-smoke.json")]
        if args.time_budget_min is not None:
            left = args.time_budget_min - (time.perf_counter() - t_start) / 60
            cmd += ["--time-budget-min", f"{max(left, 0.0):.2f}"]
        print(f"worker {len(children)}: {', '.join(r.name for r in group)}", flush=True)
        children.append(subprocess.Popen(cmd))
    codes = [c.wait() for c in children]
    failed = [c for c in codes if c not in (0, EXIT_INCOMPLETE)]
    if failed:
        raise SystemExit(f"a worker failed (exit codes {codes})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        raise SystemExit(f"--workers must be >= 1, got {args.workers}")
    config_path = args.config or CONFIGS / ("quality-smoke.json" if args.smoke else "quality.json")
    cfg = load_config(config_path)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        write_report(cfg, args.out)
        return 0
    if args.teacher is None or args.data is None:
        raise SystemExit("--teacher and --data are needed unless --report-only")
    device = resolve_device(args.device)
    torch.set_float32_matmul_precision("high")
    t_start = time.perf_counter()
    campaign = Campaign(cfg, args.teacher, args.data, args.out, device)
    campaign.teacher_result()
    todo = [r for r in selected_runs(cfg, args.experiments, args.runs)
            if not (args.out / "runs" / f"{r.name}.json").is_file()]
    if args.workers > 1 and len(todo) > 1:
        run_in_workers(args, campaign, todo, t_start)
        write_report(cfg, args.out)
        left = [r.name for r in todo if not (args.out / "runs" / f"{r.name}.json").is_file()]
        if left:
            print(f"{len(left)} run(s) left ({', '.join(left)}): repeat the command", flush=True)
            return EXIT_INCOMPLETE
        print(f"all selected runs done in {time.perf_counter() - t_start:.0f} s; report in {args.out / 'summary.md'}")
        return 0
    longest = 0.0
    remaining = list(todo)
    for spec in todo:
        elapsed = time.perf_counter() - t_start
        if args.time_budget_min is not None and elapsed + longest > args.time_budget_min * 60:
            break
        print(f"=== run {spec.name}: {spec.kind}, order {spec.order}, chain to {spec.depth} ===", flush=True)
        t0 = time.perf_counter()
        _write_json(args.out / "runs" / f"{spec.name}.json", campaign.run(spec))
        longest = max(longest, time.perf_counter() - t0)
        remaining.remove(spec)
    write_report(cfg, args.out)
    if remaining:
        print(f"{len(remaining)} run(s) left ({', '.join(r.name for r in remaining)}): repeat the command", flush=True)
        return EXIT_INCOMPLETE
    print(f"all selected runs done in {time.perf_counter() - t_start:.0f} s; report in {args.out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
