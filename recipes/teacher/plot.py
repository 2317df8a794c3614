"""One training curve across the recipe's stages, from their `training.json` files.

    python -m recipes.teacher.plot runs/teacher/stage1 runs/teacher/model --out runs/teacher/model/training_stages.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dsla_serve.quality.plots import plot_training_curve


def joined_logs(folders: list[Path], labels: list[str] | None = None) -> dict:
    """The stages' logs one after another (steps offset), with {label (default: folder name): first
    step} of each stage."""
    out = {"step": [], "loss": [], "answer_loss": [], "val_step": [], "val_loss": [], "starts": {}}
    offset = 0
    for i, folder in enumerate(folders):
        path = Path(folder) / "training.json"
        if not path.is_file():
            raise SystemExit(f"{path} not found: is the stage complete?")
        log = json.loads(path.read_text())["log"]
        out["starts"][labels[i] if labels else Path(folder).name] = offset
        out["step"] += [offset + s for s in log["step"]]
        out["loss"] += log["loss"]
        out["answer_loss"] += log.get("answer_loss") or [None] * len(log["step"])
        out["val_step"] += [offset + s for s in log["val_step"]]
        out["val_loss"] += log["val_loss"]
        offset += log["step"][-1] + 1 if log["step"] else 0
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.teacher.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stages", nargs="+", type=Path, help="model folders of the stages, in training order")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--labels", default=None, help="comma list of stage names (default: the folder names)")
    args = p.parse_args(argv)
    labels = args.labels.split(",") if args.labels else None
    if labels and len(labels) != len(args.stages):
        p.error(f"--labels names {len(labels)} stages, {len(args.stages)} given")
    log = joined_logs(args.stages, labels)
    plot_training_curve(log["step"], log["loss"], args.out, log["val_step"], log["val_loss"],
                        answer_loss=log["answer_loss"], title="Teacher training (stages joined)",
                        stage_starts=log["starts"])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
