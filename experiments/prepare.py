"""Make the small token corpus that travels with the teacher to the GPU machine for the experiments.

    python -m experiments.prepare --data runs/teacher/data --out runs/quality-data --max-train-tokens 3000000

Keeps every validation book and whole training books up to the cap (distillation samples random
windows, so a few million tokens are plenty), so teacher + data stay under the 64 MiB a device call
can carry.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dsla_serve.quality.corpus import open_token_corpus, save_token_corpus, slim_token_corpus


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the full token corpus folder")
    p.add_argument("--out", type=Path, required=True, help="the slim corpus folder to write")
    p.add_argument("--max-train-tokens", type=int, default=3_000_000)
    args = p.parse_args(argv)
    slim = slim_token_corpus(open_token_corpus(args.data), {"train": args.max_train_tokens})
    save_token_corpus(slim, args.out)
    sizes = ", ".join(f"{s}: {len(slim.documents[s])} books, {slim.num_tokens(s) / 1e6:.2f} M tokens"
                      for s in slim.splits())
    mb = sum(f.stat().st_size for f in args.out.iterdir()) / 1e6
    print(f"wrote {args.out} ({mb:.1f} MB): {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
