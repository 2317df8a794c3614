"""`python -m dsla_serve.quality ...`: the `dsla-serve eval` command without the top-level CLI."""

import argparse
import sys

from .cli import HELP, add_arguments, run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsla_serve.quality", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
