"""`dsla-serve` command line.

Each subcommand is a module with `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`, in
the package that owns it (the serving application's in `commands/`); it is imported only when
chosen, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("dsla_serve.model.demo", "convert half of a tiny random Llama to DSLA and generate with a hybrid cache"),
    "generate": ("dsla_serve.replicas.cli", "generate text offline with the replica engine at a given depth, streaming to the terminal"),
    "convert": ("dsla_serve.trainer.cli", "distil a model into a DSLA artifact, one layer at a time (chained, DeepSpeed)"),
    "eval": ("dsla_serve.quality.cli", "measure perplexity by position, passkey retrieval and recall at given depths"),
    "check": ("dsla_serve.policies.cli", "validate a policy YAML file and print it with defaults filled in and paths resolved"),
    "serve": ("dsla_serve.commands.serve", "serve a policy on this machine (starts a local Ray if none is running) until Ctrl-C"),
    "deploy": ("dsla_serve.commands.deploy", "deploy a policy's app onto an existing Ray cluster (--address) and return"),
    "build": ("dsla_serve.commands.build", "write a Ray Serve config file (serve deploy / KubeRay) that runs a policy"),
    "status": ("dsla_serve.commands.status", "show a running app's pools, depths, routing, SLO attainment, trainer and decisions"),
    "bench": ("dsla_serve.commands.bench", "load an OpenAI-compatible endpoint and report TTFT/TPOT/E2E, SLO attainment and goodput"),
}


def _module(name: str):
    return importlib.import_module(COMMANDS[name][0])


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsla-serve",
        description="Serve Hugging Face Llama-family models partly converted to dual-state linear "
                    "attention (DSLA), choosing the conversion depth under load to meet latency SLOs.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"dsla-serve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _module(name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(chosen)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(_module(args.command).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
