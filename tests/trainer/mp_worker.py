"""One process of the multi-process test, started by torchrun: `mp_worker.py CONFIG.json REPORT_DIR`.

Runs the Trainer on the tiny test model and writes what this rank saw to REPORT_DIR/rank_<r>.json.
"""

import json
import sys
from pathlib import Path

import torch

from dsla_serve.trainer import Trainer, parse_config
from dsla_serve.trainer.distributed import close_launched_group
from tests.trainer.helpers import tiny_model


def main(config_path: str, report_dir: str) -> None:
    torch.set_num_threads(1)
    cfg = parse_config(json.loads(Path(config_path).read_text()))
    model, tokenizer = tiny_model()
    losses = []
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer)
    summary = trainer.run(on_step=lambda layer, step, loss: losses.append(loss))
    report = {"rank": trainer.dist.rank, "world_size": trainer.dist.world_size, "losses": losses,
              "metrics": [r.metrics for r in summary.layers]}
    Path(report_dir, f"rank_{trainer.dist.rank}.json").write_text(json.dumps(report))
    close_launched_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
