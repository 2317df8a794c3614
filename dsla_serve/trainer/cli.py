"""`dsla-serve convert CONFIG.yaml`: distil a model into a DSLA artifact, one layer at a time.

Shows a progress bar per layer (step, loss) and ends with a table of every published layer.
Interrupted (Ctrl-C, a crash, a killed job), the artifact keeps the layers already published; the
same command resumes at the first unpublished layer.

Multi-process, one process per GPU (rank 0 writes the artifact):

    torchrun --nproc_per_node 2 -m dsla_serve.cli convert CONFIG.yaml
    deepspeed --no_local_rank --num_gpus 2 --module dsla_serve.cli convert CONFIG.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

HELP = "distil a model into a nested DSLA artifact, layer by layer (sensitivity order, DeepSpeed, resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Convert a Hugging Face Llama/Mistral/Qwen2 model to DSLA one layer at a time: rank the layers\n"
        "(order.method: retrieval_delta (default), loss_delta, entropy, forward, reverse or list), then for\n"
        "each layer of the order train its DSLA replacement against the original model with the earlier\n"
        "layers already converted, on text with retrieval episodes mixed in (data.episodes), validate it\n"
        "and append it to the artifact.\n"
        "Rerunning the same config resumes at the first unpublished layer.")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  dsla-serve convert examples/convert-tiny.yaml           tiny random model, CPU, < 3 min\n"
        "  dsla-serve convert examples/convert-tiny.yaml --depth 4 continue to every layer\n"
        "  torchrun --nproc_per_node 2 -m dsla_serve.cli convert CONFIG.yaml\n"
        "                                                          data parallel, one process per GPU\n"
        "Reference: docs/trainer.md")
    parser.add_argument("config", help="convert config YAML (see examples/convert-tiny.yaml and docs/trainer.md)")
    parser.add_argument("--depth", type=int, default=None, help="override `depth`: layers to reach in total")
    parser.add_argument("--output", default=None, help="override `output`: the artifact directory or object store "
                                                       "URI (s3://bucket/path, gs://...)")
    parser.add_argument("--device", default=None, help="override `device`: auto, cpu, cuda or cuda:N")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (the summary table still prints)")


class _LayerBars:
    """One tqdm bar per layer, on rank 0 only (`is_main()` is asked lazily: ranks exist once a run starts)."""

    def __init__(self, enabled: bool, steps: int, is_main):
        self.enabled, self.steps, self.is_main = enabled, steps, is_main
        self.bar = None
        self.layer = None

    def step(self, layer: int, step: int, loss: float) -> None:
        if not self.enabled or not self.is_main():
            return
        from tqdm import tqdm

        if layer != self.layer:
            self.close()
            self.layer = layer
            self.bar = tqdm(total=self.steps, desc=f"layer {layer}", unit="step", dynamic_ncols=True, leave=True)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        self.bar.update(1)

    def published(self, layer: int, depth: int, metrics: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{metrics['train_loss_last']:.4f}", val=f"{metrics['val_loss']:.4f}",
                                 ppl_ratio=f"{metrics['ppl_ratio']:.4f}")
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.layer = None


@contextlib.contextmanager
def _trainer_log(is_main):
    """The trainer's INFO lines (order chosen, resuming at depth d) on stderr, from rank 0 only."""
    log = logging.getLogger("dsla_serve.trainer")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(lambda record: is_main())
    previous = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)


def print_summary(artifact_path, console=None) -> None:
    """A table of every published layer of the artifact (this run's and earlier runs')."""
    from rich.console import Console
    from rich.table import Table

    from ..model import Artifact
    from ..model.storage import mask

    artifact = Artifact.open(artifact_path)
    table = Table(title=f"{mask(str(artifact_path))}: depth {artifact.depth} of {len(artifact.order)}")
    for name in ("depth", "layer", "rank", "val loss", "ppl ratio", "seconds"):
        table.add_column(name, justify="right")
    for e in artifact.entries:
        m = e.metrics
        table.add_row(str(e.rank + 1), str(e.layer), str(e.rank), f"{m.get('val_loss', float('nan')):.4f}",
                      f"{m.get('ppl_ratio', float('nan')):.4f}", f"{m.get('seconds', float('nan')):.1f}")
    (console or Console()).print(table)


def run(args: argparse.Namespace) -> int:
    from ..model import ArtifactError
    from ..model.storage import mask
    from .config import ConfigError, load_config
    from .data import DataError
    from .distributed import close_launched_group
    from .engine import DeepSpeedConfigError
    from .trainer import ResumeError, Trainer

    try:
        config = load_config(args.config).with_overrides(depth=args.depth, output=args.output, device=args.device)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    trainer = Trainer(config)

    def is_main() -> bool:
        return trainer.dist is None or trainer.dist.is_main

    bars = _LayerBars(enabled=not args.quiet, steps=config.training.steps, is_main=is_main)
    with _trainer_log(is_main):
        try:
            summary = trainer.run(on_step=bars.step, on_layer=bars.published)
        except (DataError, DeepSpeedConfigError, ResumeError, ArtifactError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            depth = trainer.progress().published_depth
            print(f"interrupted: {mask(str(config.output))} keeps depth {depth}; rerun the same command to resume",
                  file=sys.stderr)
            return 130
        finally:
            bars.close()
            close_launched_group()
    if is_main():
        print_summary(summary.artifact)
    return 0
