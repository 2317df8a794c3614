"""Default locations of the teacher recipe (relative to this checkout; `runs/` is git-ignored)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BOOKS = REPO.parent / "shared" / "data" / "minipg" / "books"
SPLIT = Path(__file__).resolve().parent / "split.json"
RUN = REPO / "runs" / "teacher"
TOKENIZER = RUN / "tokenizer"
DATA = RUN / "data"
MODEL = RUN / "model"
