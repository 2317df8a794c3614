"""The claim's text, split by whole book: training books for `dsla-serve convert`, held-out books for
`dsla-serve eval`, in two folders (and a .tar.xz of both to carry to a GPU machine).

    python -m experiments.prepare --books ../shared/data/minipg/books --split recipes/teacher/split.json \
        --out runs/claim-data --max-train-mb 15

The split's `validation` books (whole books) go to `<out>/held-out/`, never to training; its `train`
books, in name order, go to `<out>/train/` while they fit `--max-train-mb` (books that would pass the
cap are skipped, so the folder holds whole books only). `<out>/books.json` lists both.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
from pathlib import Path

from dsla_serve.quality.books import load_split


def prepare(books: Path, split_file: Path, out: Path, max_train_bytes: int | None) -> dict:
    split = load_split(split_file, books)
    for sub in ("train", "held-out"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True)
    kept, skipped, size = [], [], 0
    for name in split["train"]:
        n = (books / name).stat().st_size
        if max_train_bytes is not None and size + n > max_train_bytes:
            skipped.append(name)
            continue
        shutil.copy2(books / name, out / "train" / name)
        kept.append(name)
        size += n
    for name in split["validation"]:
        shutil.copy2(books / name, out / "held-out" / name)
    listing = {"source": str(books), "split": str(split_file), "train": kept, "train_skipped_for_size": skipped,
               "held_out": split["validation"], "train_bytes": size}
    (out / "books.json").write_text(json.dumps(listing, indent=1) + "\n")
    with tarfile.open(out.with_suffix(".tar.xz"), "w:xz") as tar:
        tar.add(out, arcname=out.name)
    return listing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--books", type=Path, required=True, help="folder of .txt books")
    p.add_argument("--split", type=Path, required=True, help="split JSON (train / validation book names)")
    p.add_argument("--out", type=Path, required=True, help="output folder (replaced)")
    p.add_argument("--max-train-mb", type=float, default=None, help="cap on the training books' size (MB)")
    args = p.parse_args(argv)
    cap = None if args.max_train_mb is None else int(args.max_train_mb * 1e6)
    listing = prepare(args.books, args.split, args.out, cap)
    packed = args.out.with_suffix(".tar.xz")
    print(f"{args.out}: {len(listing['train'])} training books ({listing['train_bytes'] / 1e6:.1f} MB), "
          f"{len(listing['held_out'])} held-out; {packed} {packed.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
