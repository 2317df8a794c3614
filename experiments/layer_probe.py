"""Which single layer carries retrieval, and does a replacement keep it? Each layer alone, each kind.

    python -m experiments.layer_probe --teacher runs/teacher/model --data runs/quality-data \
        --out runs/layer-probe --config experiments/configs/layer-probe-cpu.json --device cpu

For every (kind, layer) of --kinds x --layers: a copy of the teacher with only that layer converted
(depth 1), its output gain calibrated and fitted exactly as one step of a chained conversion
(`conversion.fit_layer`, the config's `distill` settings and batches), then evaluated with the
config's `eval` settings. A chained campaign cannot say this: once a layer that retrieval runs
through is converted, every deeper depth has lost it, whatever comes after.

Writes <out>/probes/<kind>_<layer>.json per probe (skipped when the command is repeated),
<out>/teacher.json, and <out>/summary.md: one row per layer, the kinds side by side.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from dsla_serve.model import DSLAConfig, set_depth
from dsla_serve.quality.models import resolve_device

from .config import load_config
from .conversion import convert_layer, fit_layer, validation
from .quality import CONFIGS, Campaign, _write_json
from .report import metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.layer_probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", type=Path, required=True, help="teacher model folder (Hugging Face format)")
    p.add_argument("--data", type=Path, required=True, help="token corpus folder made with the teacher's tokenizer")
    p.add_argument("--out", type=Path, required=True, help="results folder (resumed when it exists)")
    p.add_argument("--config", type=Path, default=CONFIGS / "layer-probe-cpu.json",
                   help="experiment config JSON: its distill and eval sections are used (default: %(default)s)")
    p.add_argument("--kinds", default="dsla,gla", help="comma list of layer kinds (default: %(default)s)")
    p.add_argument("--layers", default=None, help="comma list of layer indices (default: all)")
    p.add_argument("--dsla", default="{}", help='DSLAConfig fields to change, as JSON, e.g. '
                   '\'{"history_gate_bias": 0, "recency_gate_bias": 0, "gate_init_std": 0.02}\' (default: none)')
    p.add_argument("--loss-answer-kl", type=float, default=None,
                   help="weight of the KL at answer tokens while fitting (default: the config's loss_answer_kl)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    return p


def probe(campaign: Campaign, kind: str, layer: int, config: DSLAConfig, answer_kl: float | None = None) -> dict:
    """Convert `layer` alone as `kind`, fit it (with `answer_kl` as the answer term's weight, when given),
    and evaluate the model at depth 1."""
    settings = campaign.fit_settings()
    if answer_kl is not None:
        settings = dataclasses.replace(settings, loss=dataclasses.replace(settings.loss, answer_kl=answer_kl))
    model = copy.deepcopy(campaign.teacher)
    t0 = time.perf_counter()
    convert_layer(model, layer, kind, config, seed=campaign.cfg.distill.mixture.seed * 1000)
    losses = fit_layer(model, layer, 1, campaign.batches, 0, settings, campaign.device)
    val = validation(model, 1, layer, campaign.val_seqs, settings.loss, campaign.device)
    set_depth(model, 1)
    return {"kind": kind, "layer": layer, "dsla_config": config.to_dict(), "fit": dataclasses.asdict(settings),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "validation": val, "eval": campaign.evaluate(model), "seconds": round(time.perf_counter() - t0, 1),
            "meta": campaign.meta}


def _cell(m: dict) -> str:
    pk = "/".join(f"{100 * v:.0f}" for v in m.get("passkey", {}).values())
    mq = "/".join(f"{100 * v:.0f}" for v in m.get("mqar", {}).values())
    return f"{m['ppl']:.1f} | {pk} | {mq}"


def write_summary(out: Path, kinds: list[str], layers: list[int]) -> Path:
    teacher = metrics(json.loads((out / "teacher.json").read_text())["eval"])
    head = ["layer"] + [f"{k} {col}" for k in kinds for col in ("ppl", "passkey %", "MQAR %")]
    lines = ["# Single-layer probes", "", f"teacher: {_cell(teacher)} (ppl | passkey % by length | MQAR % by size)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for layer in layers:
        cells = [str(layer)]
        for kind in kinds:
            path = out / "probes" / f"{kind}_{layer}.json"
            cells.append(_cell(metrics(json.loads(path.read_text())["eval"])) if path.is_file() else "- | - | -")
        lines.append("| " + " | ".join(cells) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return out / "summary.md"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config)
    try:
        config = DSLAConfig.from_dict({**DSLAConfig().to_dict(), **json.loads(args.dsla)})
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise SystemExit(f"--dsla {args.dsla!r}: {e}") from None
    if args.loss_answer_kl is not None and args.loss_answer_kl < 0:
        raise SystemExit(f"--loss-answer-kl must be >= 0, got {args.loss_answer_kl}")
    device = resolve_device(args.device)
    torch.set_float32_matmul_precision("high")
    args.out.mkdir(parents=True, exist_ok=True)
    campaign = Campaign(cfg, args.teacher, args.data, args.out, device)
    campaign.teacher_result()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    layers = [int(x) for x in args.layers.split(",")] if args.layers else list(range(campaign.num_layers))
    bad = [x for x in layers if not 0 <= x < campaign.num_layers]
    if bad:
        raise SystemExit(f"--layers {bad}: the teacher has layers 0..{campaign.num_layers - 1}")
    for layer in layers:
        for kind in kinds:
            path = args.out / "probes" / f"{kind}_{layer}.json"
            if path.is_file():
                continue
            result = probe(campaign, kind, layer, config, args.loss_answer_kl)
            _write_json(path, result)
            m = metrics(result["eval"])
            print(f"{kind} layer {layer}: ppl {m['ppl']:.2f}, passkey {m.get('passkey')}, mqar {m.get('mqar')} "
                  f"({result['seconds']:.0f} s)", flush=True)
            write_summary(args.out, kinds, layers)
    print(f"summary in {write_summary(args.out, kinds, layers)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
