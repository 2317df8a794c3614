"""Training text: read documents, clean them, split by document, tokenize, pack into sequences.

    docs = read_documents(["../shared/data/minipg/books"])      # [Document(source, text)], cleaned
    data = build_dataset(config.data, tokenizer, seed=0)         # PackedData(train [N, L], val [M, L])

Documents are plain text files (folders are searched recursively for `*.txt` and `*.jsonl`) or
JSON-lines files with a `"text"` field per line (each line one document). Cleaning is
`dsla_serve.quality.text.clean_text`: it removes a UTF-8 BOM, normalises CRLF/CR line ends to LF,
and keeps only the body of a Project Gutenberg book (the lines between `*** START OF THE PROJECT
GUTENBERG ...` and `*** END OF ...`). The split is by document, never by line, so no validation
text is ever seen in training; it is deterministic for a given seed.

Train-only documents (`DataConfig.train_only_paths`, e.g. the served-prompt sample of a serving
policy) join the training split only, and are read again when their files change:

    stamp = files_stamp(cfg.train_only_paths)
    data = add_training_documents(data, read_present_documents(cfg.train_only_paths), tokenizer, cfg.seq_len, stamp)
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..quality.text import clean_text

if TYPE_CHECKING:  # pydantic-free at run time: the GPU image imports these modules without it
    from .config import DataConfig

TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl",)
DEFAULT_SEGMENT_CHARS = 20_000


class DataError(ValueError):
    """Training data that cannot be used; the message names the path and the problem."""


@dataclass(frozen=True)
class Document:
    """One document: its text (cleaned) and where it came from (`file` or `file:line`)."""

    source: str
    text: str


@dataclass
class PackedData:
    """Token sequences ready for training: `train` [N, seq_len] and `val` [M, seq_len] int64."""

    train: torch.Tensor
    val: torch.Tensor
    info: dict = field(default_factory=dict)
    base_train: torch.Tensor | None = None  # `train` before train-only documents were appended
    train_only_stamp: tuple | None = None  # `files_stamp` of the train-only files `train` holds


# --- reading and cleaning -------------------------------------------------------------------

def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except PermissionError:
        raise DataError(f"cannot read data file {path}: permission denied") from None
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"data file {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None


def _read_jsonl(path: Path) -> list[Document]:
    docs = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON: {e.msg}") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f'{path}:{lineno}: each line must be a JSON object with a string "text" field')
        text = clean_text(record["text"])
        if text:
            docs.append(Document(f"{path}:{lineno}", text))
    return docs


def _files_under(folder: Path) -> list[Path]:
    try:
        files = sorted(p for p in folder.rglob("*")
                       if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES)
    except PermissionError as e:
        raise DataError(f"cannot list data folder {folder}: permission denied ({e.filename})") from None
    if not files:
        raise DataError(f"data folder {folder} holds no *.txt or *.jsonl files")
    return files


def _read_path(path: Path) -> list[Document]:
    """The non-empty cleaned documents of one existing file or folder."""
    docs = []
    for f in _files_under(path) if path.is_dir() else [path]:
        if f.suffix.lower() in JSONL_SUFFIXES:
            docs.extend(_read_jsonl(f))
        else:
            text = clean_text(_read_text(f))
            if text:
                docs.append(Document(str(f), text))
    return docs


def read_documents(paths: list[str | Path]) -> list[Document]:
    """All non-empty cleaned documents of `paths` (files and folders), in a stable order.

    Raises DataError for a missing or unreadable path, a file that is not UTF-8, a bad jsonl line,
    or when no text at all is found.
    """
    docs: list[Document] = []
    for raw_path in paths:
        path = Path(raw_path)
        if not path.exists():
            raise DataError(f"data path {path} does not exist")
        docs.extend(_read_path(path))
    if not docs:
        raise DataError(f"no text found in {', '.join(str(p) for p in paths)} (all files empty)")
    return docs


def segment_document(doc: Document, max_chars: int) -> list[Document]:
    """Cut `doc` into contiguous pieces of at most ~`max_chars`, at line breaks where possible."""
    if len(doc.text) <= max_chars:
        return [doc]
    pieces, start = [], 0
    while start < len(doc.text):
        end = min(start + max_chars, len(doc.text))
        if end < len(doc.text):
            cut = doc.text.rfind("\n", start + max_chars // 2, end)
            end = cut + 1 if cut != -1 else end
        pieces.append(Document(f"{doc.source}#{len(pieces)}", doc.text[start:end]))
        start = end
    return pieces


# --- split, tokenize, pack ------------------------------------------------------------------

def split_documents(docs: list[Document], val_fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    """Shuffle the documents (seeded) and hold out round(val_fraction * n) of them (at least 1)."""
    if len(docs) < 2:
        raise DataError(f"need at least 2 documents to split training from validation, got {len(docs)}")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = min(len(docs) - 1, max(1, round(val_fraction * len(docs))))
    return [docs[i] for i in order[n_val:]], [docs[i] for i in order[:n_val]]


def pack_documents(docs: list[Document], tokenizer, seq_len: int, max_tokens: int | None = None) -> torch.Tensor:
    """Tokenize `docs`, join them with the EOS token, and cut into [N, seq_len] int64 (remainder dropped).

    Stops tokenizing once `max_tokens` tokens are gathered, so a cap also bounds the work. Each
    document's ids become a tensor at once (a Python list of a whole corpus would take ~40 bytes
    per token).
    """
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    pieces: list[torch.Tensor] = []
    count = 0
    for doc in docs:
        ids = torch.tensor(tokenizer(doc.text, add_special_tokens=False)["input_ids"] + eos, dtype=torch.int64)
        if max_tokens is not None and count + ids.numel() >= max_tokens:
            pieces.append(ids[: max_tokens - count])
            break
        pieces.append(ids)
        count += ids.numel()
    stream = torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.int64)
    n = stream.numel() // seq_len
    return stream[: n * seq_len].reshape(n, seq_len)


def build_dataset(cfg: DataConfig, tokenizer, seed: int) -> PackedData:
    """Read, clean, split by document and pack the data of a `DataConfig`.

    A corpus of one document (e.g. tinyshakespeare) is first cut into contiguous segments (see
    `DataConfig.segment_chars`), since a split needs whole units on either side.
    """
    docs = read_documents(cfg.paths)
    n_read = len(docs)
    segment = cfg.segment_chars or (DEFAULT_SEGMENT_CHARS if len(docs) == 1 else None)
    if segment:
        docs = [piece for d in docs for piece in segment_document(d, segment)]
    if cfg.max_documents is not None and len(docs) > cfg.max_documents:
        keep = sorted(random.Random(seed + 1).sample(range(len(docs)), cfg.max_documents))
        docs = [docs[i] for i in keep]
    train_docs, val_docs = split_documents(docs, cfg.val_fraction, seed)
    train = pack_documents(train_docs, tokenizer, cfg.seq_len, cfg.max_train_tokens)
    val = pack_documents(val_docs, tokenizer, cfg.seq_len, cfg.max_val_tokens)
    where = ", ".join(str(p) for p in cfg.paths)
    for name, packed, n_docs in (("training", train, len(train_docs)), ("validation", val, len(val_docs))):
        if packed.shape[0] == 0:
            raise DataError(f"{where}: the {name} split ({n_docs} documents) has fewer than seq_len="
                            f"{cfg.seq_len} tokens; add data, lower seq_len or change val_fraction")
    info = {"files_documents": n_read, "documents": len(docs), "train_documents": len(train_docs),
            "val_documents": len(val_docs), "train_sequences": int(train.shape[0]),
            "val_sequences": int(val.shape[0]), "seq_len": cfg.seq_len,
            "val_sources": sorted({d.source for d in val_docs})[:20]}
    return PackedData(train=train, val=val, info=info)


# --- train-only documents -------------------------------------------------------------------

def files_stamp(paths: list[str | Path]) -> tuple:
    """((path, mtime_ns, size) or (path, None, None) when missing) per path: changes when a file does."""
    stamps = []
    for raw in paths:
        try:
            st = Path(raw).stat()
            stamps.append((str(raw), st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            stamps.append((str(raw), None, None))
    return tuple(stamps)


def read_present_documents(paths: list[str | Path]) -> list[Document]:
    """The cleaned documents of the files in `paths` that exist now (missing ones: not written yet)."""
    return [doc for p in map(Path, paths) if p.exists() for doc in _read_path(p)]


def add_training_documents(data: PackedData, docs: list[Document], tokenizer, seq_len: int,
                           stamp: tuple | None = None) -> PackedData:
    """`data` with `docs` packed into [K, seq_len] and appended to its base training split.

    Replaces any train-only documents added before; `val` is untouched, so validation stays
    comparable across layers. Short documents are joined (EOS between them) like any others.
    """
    base = data.base_train if data.base_train is not None else data.train
    extra = pack_documents(docs, tokenizer, seq_len) if docs else base.new_empty((0, seq_len))
    info = {**data.info, "train_only_documents": len(docs), "train_only_sequences": int(extra.shape[0])}
    return PackedData(train=torch.cat([base, extra]) if extra.shape[0] else base, val=data.val, info=info,
                      base_train=base, train_only_stamp=stamp)
