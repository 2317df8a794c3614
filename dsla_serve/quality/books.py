"""Plain-text books: reading one (cleaned by `.text`) and a seeded split by whole book."""

from __future__ import annotations

import json
import random
from pathlib import Path

from .text import normalise, strip_gutenberg

SPLIT_VERSION = 1


def read_book(path: str | Path) -> str:
    """The normalised body of one book file (UTF-8). Raises FileNotFoundError / ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"book file not found: {path}")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e}") from None
    body = strip_gutenberg(normalise(raw))
    if not body.strip():
        raise ValueError(f"{path} has no text between its Gutenberg START and END markers")
    return body


def list_books(books_dir: str | Path) -> list[str]:
    """Sorted file names of the `*.txt` books in a folder. Raises if the folder has none."""
    books_dir = Path(books_dir)
    if not books_dir.is_dir():
        raise FileNotFoundError(f"books folder not found: {books_dir}")
    names = sorted(p.name for p in books_dir.glob("*.txt"))
    if not names:
        raise ValueError(f"no *.txt books in {books_dir}")
    return names


def make_split(names: list[str], num_validation: int, seed: int) -> dict:
    """Hold `num_validation` whole books out for validation, chosen by a seeded shuffle of the sorted names.

    Returns {"version", "seed", "train": [...], "validation": [...]} with both lists sorted.
    """
    names = sorted(names)
    if not 0 < num_validation < len(names):
        raise ValueError(f"num_validation must be between 1 and {len(names) - 1} for {len(names)} books, "
                         f"got {num_validation}")
    shuffled = names[:]
    random.Random(seed).shuffle(shuffled)
    validation = sorted(shuffled[:num_validation])
    train = sorted(n for n in names if n not in set(validation))
    return {"version": SPLIT_VERSION, "seed": seed, "train": train, "validation": validation}


def save_split(split: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(split, indent=2) + "\n")


def load_split(path: str | Path, books_dir: str | Path | None = None) -> dict:
    """Read a split JSON; with `books_dir`, check that every listed book exists there."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    split = json.loads(path.read_text())
    for key in ("train", "validation"):
        if not isinstance(split.get(key), list) or not split[key]:
            raise ValueError(f"{path}: '{key}' must be a non-empty list of book file names")
    overlap = set(split["train"]) & set(split["validation"])
    if overlap:
        raise ValueError(f"{path}: books in both train and validation: {sorted(overlap)}")
    if books_dir is not None:
        missing = [n for n in split["train"] + split["validation"] if not (Path(books_dir) / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} lists books missing from {books_dir}: {missing}")
    return split
