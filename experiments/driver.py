"""Run a campaign: `dsla-serve convert` then `dsla-serve eval` per run, in parallel processes, then the report.

    python -m experiments.driver experiments/configs/smollm2-claim.yaml --out runs/claim --workers 6
    python -m experiments.driver CONFIG --out DIR --report-only          # tables and plots from saved results

For each run: `<out>/runs/<name>/convert.yaml` (the campaign's settings with the run's over them, its
depth in layers, its artifact `<out>/runs/<name>/artifact`), then `python -m dsla_serve.cli convert` on it
(log: convert.log), then `python -m dsla_serve.cli eval --artifact ...` at the run's evaluation depths
(eval/results.json, eval.log). The base model is evaluated once (`<out>/teacher/results.json`). A run
with `order_from: R` starts once R's artifact exists and converts in R's measured order. Nothing here
trains, orders or scores: the product commands do. `--deadline-min` interrupts conversions still
running at that time (they keep their published layers, as `convert` does on Ctrl-C) and evaluates
what was published. Rerunning the command resumes: `convert` continues an artifact, a run whose
eval/results.json exists is not evaluated again.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .campaign import Campaign, RunSpec, load_campaign, merge
from .report import write_report

POLL_S = 2.0


@dataclass
class RunState:
    spec: RunSpec
    depth: int
    eval_depths: list[int]
    phase: str = "pending"  # pending | converting | evaluating | done | failed
    proc: subprocess.Popen | None = None
    started: float | None = None
    times: dict = field(default_factory=dict)
    note: str = ""


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dsla_serve.cli", *args]


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as f:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def published(artifact: Path) -> tuple[list[int], int] | None:
    """(order, published depth) of an artifact, None before its manifest exists."""
    manifest = artifact / "manifest.json"
    if not manifest.is_file():
        return None
    m = json.loads(manifest.read_text())
    return m["order"], len(m["layers"])


class Driver:
    def __init__(self, campaign: Campaign, base_dir: Path, out: Path, *, device: str | None, workers: int,
                 deadline_s: float | None, only: list[str] | None):
        from dsla_serve.model.loading import load_model_config
        from dsla_serve.model.sources import normalise_spec
        from dsla_serve.quality.models import parse_depths

        self.campaign, self.base_dir, self.out = campaign, base_dir, out.resolve()
        self.model = normalise_spec(campaign.base_model, base_dir)
        self.num_layers = load_model_config(self.model).num_hidden_layers
        self.device, self.workers, self.deadline_s = device, workers, deadline_s
        specs = [r for r in campaign.runs if only is None or r.name in only]
        self.runs = [RunState(r, parse_depths(str(r.depth), self.num_layers)[-1],
                              [d for d in parse_depths(",".join(map(str, r.eval_depths)), self.num_layers) if d > 0]
                              if r.eval_depths else [])
                     for r in specs]
        self.teacher: subprocess.Popen | None = None
        self.t0 = time.monotonic()

    def folder(self, name: str) -> Path:
        return self.out / "runs" / name

    # --- steps -----------------------------------------------------------------------------------
    def _write_convert(self, run: RunState) -> Path | None:
        """The run's convert.yaml, or None while its `order_from` run has no artifact yet."""
        spec = run.spec
        if spec.order_from is not None:
            source = published(self.folder(spec.order_from) / "artifact")
            if source is None:
                return None
            spec = spec.model_copy(update={"convert": {**spec.convert, "order": {"method": "list", "layers": source[0]}}})
        config = self.campaign.convert_config(spec, self.folder(spec.name) / "artifact", run.depth, self.base_dir)
        path = self.folder(spec.name) / "convert.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        return path

    def _start_convert(self, run: RunState, path: Path) -> None:
        cmd = _cli("convert", str(path), "--quiet") + (["--device", self.device] if self.device else [])
        run.proc, run.phase, run.started = _spawn(cmd, path.parent / "convert.log"), "converting", time.monotonic()
        print(f"[{self.elapsed():6.0f} s] {run.spec.name}: convert to depth {run.depth}", flush=True)

    def _start_eval(self, run: RunState) -> None:
        state = published(self.folder(run.spec.name) / "artifact")
        reached = state[1] if state else 0
        depths = [d for d in run.eval_depths if d <= reached]
        missing = [d for d in run.eval_depths if d > reached]
        if missing:
            run.note = f"depths {missing} not reached (published {reached})"
        results = self.folder(run.spec.name) / "eval" / "results.json"
        if not depths or results.is_file():
            run.phase = "done" if depths or not missing else "failed"
            return
        cmd = _cli("eval", "--model", self.model, "--artifact", str(self.folder(run.spec.name) / "artifact"),
                   "--depths", ",".join(map(str, depths)), "--out", str(results.parent), "--quiet",
                   *self.campaign.eval.cli_args()) + (["--device", self.device] if self.device else [])
        run.proc, run.phase, run.started = _spawn(cmd, self.folder(run.spec.name) / "eval.log"), "evaluating", \
            time.monotonic()
        print(f"[{self.elapsed():6.0f} s] {run.spec.name}: eval at depths {depths}", flush=True)

    def _start_teacher(self) -> None:
        results = self.out / "teacher" / "results.json"
        if results.is_file():
            return
        cmd = _cli("eval", "--model", self.model, "--out", str(results.parent), "--quiet",
                   *self.campaign.eval.cli_args()) + (["--device", self.device] if self.device else [])
        self.teacher = _spawn(cmd, self.out / "teacher" / "eval.log")

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    # --- the loop --------------------------------------------------------------------------------
    def run(self) -> int:
        self._start_teacher()
        stopping = False
        while True:
            for run in self.runs:
                if run.proc is None or run.proc.poll() is None:
                    continue
                code, took = run.proc.returncode, time.monotonic() - run.started
                run.times[run.phase] = round(took, 1)
                run.proc = None
                if run.phase == "converting":
                    if code not in (0, 130):
                        run.note = f"convert exit code {code} (see convert.log)"
                    self._start_eval(run)
                    if run.phase == "evaluating":
                        continue
                else:
                    run.phase = "done" if code == 0 else "failed"
                    run.note = run.note or ("" if code == 0 else f"eval exit code {code} (see eval.log)")
                print(f"[{self.elapsed():6.0f} s] {run.spec.name}: {run.phase} {run.note}".rstrip(), flush=True)
            if not stopping and self.deadline_s is not None and self.elapsed() > self.deadline_s:
                stopping = True
                for run in self.runs:
                    if run.phase == "converting" and run.proc is not None:
                        print(f"[{self.elapsed():6.0f} s] {run.spec.name}: deadline, interrupting", flush=True)
                        run.proc.send_signal(signal.SIGINT)
                for run in self.runs:
                    if run.phase == "pending":
                        run.phase, run.note = "failed", "not started before the deadline"
            converting = sum(r.phase == "converting" for r in self.runs)
            for run in self.runs:
                if stopping or converting >= self.workers or run.phase != "pending":
                    continue
                path = self._write_convert(run)
                if path is not None:
                    self._start_convert(run, path)
                    converting += 1
            teacher_busy = self.teacher is not None and self.teacher.poll() is None
            if all(r.phase in ("done", "failed") for r in self.runs) and not teacher_busy:
                break
            time.sleep(POLL_S)
        if self.teacher is not None and self.teacher.returncode != 0:
            print(f"teacher eval failed (exit code {self.teacher.returncode}; see teacher/eval.log)", flush=True)
        (self.out / "driver.json").write_text(json.dumps(
            {"num_layers": self.num_layers, "seconds": round(self.elapsed(), 1),
             "runs": {r.spec.name: {"phase": r.phase, "depth": r.depth, "eval_depths": r.eval_depths,
                                    "seconds": r.times, "note": r.note} for r in self.runs}}, indent=1) + "\n")
        print(f"[{self.elapsed():6.0f} s] all runs ended; report: {write_report(self.campaign, self.out)}", flush=True)
        return 0 if all(r.phase == "done" for r in self.runs) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.driver", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="campaign YAML (experiments/configs/)")
    p.add_argument("--out", type=Path, required=True, help="results folder (resumed when it exists)")
    p.add_argument("--runs", default=None, help="comma list of runs (default: all)")
    p.add_argument("--workers", type=int, default=1, help="conversions at a time (default: 1)")
    p.add_argument("--device", default=None, help="override every run's device (convert and eval)")
    p.add_argument("--deadline-min", type=float, default=None,
                   help="interrupt conversions still running after this many minutes and evaluate what they published")
    p.add_argument("--override", default=None, help='TrainerSettings laid over the campaign\'s convert section '
                   'for every run, as JSON, e.g. \'{"training": {"steps": 80}}\' (recorded in each convert.yaml)')
    p.add_argument("--report-only", action="store_true", help="only rewrite the report from saved results")
    args = p.parse_args(argv)
    campaign, base_dir = load_campaign(args.config)
    if args.override:
        try:
            changes = json.loads(args.override)
        except json.JSONDecodeError as e:
            raise SystemExit(f"--override is not JSON: {e}") from None
        campaign = campaign.model_copy(update={"convert": merge(campaign.convert, changes)})
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        print(f"report: {write_report(campaign, args.out)}")
        return 0
    if args.workers < 1:
        raise SystemExit(f"--workers must be >= 1, got {args.workers}")
    only = [n.strip() for n in args.runs.split(",")] if args.runs else None
    driver = Driver(campaign, base_dir, args.out, device=args.device, workers=args.workers,
                    deadline_s=None if args.deadline_min is None else 60 * args.deadline_min, only=only)
    return driver.run()


if __name__ == "__main__":
    sys.exit(main())
