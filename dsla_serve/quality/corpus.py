"""Books tokenized once and kept as flat token arrays, one per split, with document boundaries.

A token corpus on disk is a folder:

    meta.json          version, tokenizer fingerprint, eos id, dtype, the book split, and per split
                       the documents as {name, start, length} into that split's array
    <split>.bin        the split's tokens (uint16, or uint32 for vocabularies over 65535): each
                       document followed by one EOS token (not counted in its length)

It exists so that a GPU machine which cannot see the text folder needs only a few MB of tokens, and
so that training and evaluation read exactly the same tokens. `open_token_corpus` refuses a corpus
made with a different tokenizer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .books import read_book

CORPUS_VERSION = 1


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of a fast tokenizer's full serialisation (vocabulary, merges, normalisers, specials)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"{type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer")
    return hashlib.sha256(backend.to_str().encode()).hexdigest()


def eos_id(tokenizer) -> int:
    """The id that separates documents: the tokenizer's EOS (required)."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer ({type(tokenizer).__name__}) has no eos_token; documents need a separator")
    return int(tokenizer.eos_token_id)


@dataclass(frozen=True)
class Document:
    name: str
    start: int  # offset into the split's token array
    length: int  # tokens, without the EOS that follows


@dataclass
class TokenCorpus:
    """Token arrays per split plus their documents. `arrays[split]` is 1-D (a memmap when opened)."""

    arrays: dict[str, np.ndarray]
    documents: dict[str, list[Document]]
    meta: dict = field(default_factory=dict)

    def splits(self) -> list[str]:
        return list(self.arrays)

    def _check(self, split: str) -> None:
        if split not in self.arrays:
            raise KeyError(f"the token corpus has no split {split!r}; it has {self.splits()}")

    def stream(self, split: str) -> np.ndarray:
        """All tokens of a split, documents separated by EOS."""
        self._check(split)
        return self.arrays[split]

    def docs(self, split: str, max_docs: int | None = None) -> list[tuple[str, np.ndarray]]:
        """[(name, tokens without EOS)] of a split, the first `max_docs` of them (sorted by name)."""
        self._check(split)
        docs = self.documents[split][:max_docs] if max_docs else self.documents[split]
        return [(d.name, self.arrays[split][d.start:d.start + d.length]) for d in docs]

    def num_tokens(self, split: str) -> int:
        return sum(d.length for d in self.documents[split])


def tokenize_texts(tokenizer, texts: list[str], progress: bool = True, desc: str = "tokenize") -> list[np.ndarray]:
    """Token ids of each whole text (no special tokens added), through the fast backend in small batches."""
    from tqdm.auto import tqdm

    backend = getattr(tokenizer, "backend_tokenizer", None)
    out = []
    with tqdm(total=len(texts), desc=desc, unit="doc", disable=not progress) as bar:
        for i in range(0, len(texts), 4):
            batch = texts[i:i + 4]
            if backend is not None:
                ids = [e.ids for e in backend.encode_batch(batch, add_special_tokens=False)]
            else:
                ids = [tokenizer.encode(t, add_special_tokens=False) for t in batch]
            out.extend(np.asarray(x, dtype=np.int64) for x in ids)
            bar.update(len(batch))
    return out


def _token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def build_token_corpus(books_dir: str | Path, split: dict, tokenizer, splits=("train", "validation"),
                       max_docs: int | None = None, progress: bool = True) -> TokenCorpus:
    """Read and tokenize the books that `split` lists for each of `splits` (at most `max_docs` each)."""
    dtype = _token_dtype(len(tokenizer))
    eos = eos_id(tokenizer)
    arrays, documents = {}, {}
    for name in splits:
        if name not in split:
            raise KeyError(f"the book split has no {name!r} list; it has {sorted(k for k in split if k != 'seed')}")
        names = split[name][:max_docs] if max_docs else split[name]
        texts = [read_book(Path(books_dir) / n) for n in names]
        ids = tokenize_texts(tokenizer, texts, progress, desc=f"tokenize {name}")
        docs, start = [], 0
        for n, x in zip(names, ids):
            docs.append(Document(n, start, len(x)))
            start += len(x) + 1
        flat = np.empty(start, dtype=dtype)
        for d, x in zip(docs, ids):
            flat[d.start:d.start + d.length] = x
            flat[d.start + d.length] = eos
        arrays[name], documents[name] = flat, docs
    meta = {"version": CORPUS_VERSION, "tokenizer_sha256": tokenizer_fingerprint(tokenizer), "eos_token_id": eos,
            "vocab_size": len(tokenizer), "dtype": np.dtype(dtype).name, "split": split}
    return TokenCorpus(arrays, documents, meta)


def save_token_corpus(corpus: TokenCorpus, out_dir: str | Path) -> Path:
    """Write `<split>.bin` files and meta.json (last, so a folder with meta.json is complete)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(corpus.meta)
    meta["documents"] = {s: [d.__dict__ for d in docs] for s, docs in corpus.documents.items()}
    for s, arr in corpus.arrays.items():
        arr.tofile(out / f"{s}.bin")
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    tmp.replace(out / "meta.json")
    return out


def is_token_corpus(path: str | Path) -> bool:
    return (Path(path) / "meta.json").is_file()


def open_token_corpus(path: str | Path, tokenizer=None) -> TokenCorpus:
    """Open a saved corpus (arrays memory-mapped). With `tokenizer`, refuse one made by another tokenizer."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a token corpus: {meta_path} is missing")
    meta = json.loads(meta_path.read_text())
    if meta.get("version") != CORPUS_VERSION:
        raise ValueError(f"{meta_path}: unknown token corpus version {meta.get('version')!r} "
                         f"(this code reads version {CORPUS_VERSION})")
    if tokenizer is not None and tokenizer_fingerprint(tokenizer) != meta["tokenizer_sha256"]:
        raise ValueError(f"{path} was tokenized with a different tokenizer than the model's "
                         f"(fingerprint {meta['tokenizer_sha256'][:12]}...); rebuild it with the model's tokenizer")
    arrays, documents = {}, {}
    for s, docs in meta["documents"].items():
        bin_path = path / f"{s}.bin"
        arr = np.memmap(bin_path, dtype=np.dtype(meta["dtype"]), mode="r")
        documents[s] = [Document(**d) for d in docs]
        expected = sum(d.length + 1 for d in documents[s])
        if arr.size != expected:
            raise ValueError(f"{bin_path} holds {arr.size} tokens but meta.json describes {expected}")
        arrays[s] = arr
    return TokenCorpus(arrays, documents, meta)


def load_documents(data: str | Path, tokenizer, split_file: str | Path | None = None, split: str = "validation",
                   max_docs: int | None = None, progress: bool = True) -> list[tuple[str, np.ndarray]]:
    """Evaluation documents [(name, tokens)] from any of:

    - a token corpus folder (its `split` documents; refused if made by another tokenizer);
    - a folder of books: the `split` list of `split_file` when given, else every `*.txt` in it;
    - a single text file (for example WikiText-2's valid.txt), as one document.
    At most `max_docs` documents, in sorted order.
    """
    from .books import list_books, load_split

    data = Path(data)
    if is_token_corpus(data):
        return open_token_corpus(data, tokenizer).docs(split, max_docs)
    if data.is_dir():
        names = load_split(split_file, data)[split] if split_file else list_books(data)
        folder = data
    elif data.is_file():
        names, folder = [data.name], data.parent
    else:
        raise FileNotFoundError(f"evaluation data not found: {data} (expected a token corpus folder, a folder "
                                f"of .txt books or a text file)")
    names = names[:max_docs] if max_docs else names
    texts = [read_book(folder / n) for n in names]
    return list(zip(names, tokenize_texts(tokenizer, texts, progress)))


def slim_token_corpus(corpus: TokenCorpus, max_tokens: dict[str, int]) -> TokenCorpus:
    """A copy keeping, per split named in `max_tokens`, whole documents in order until the cap
    (at least one document); other splits are kept whole. For carrying a small corpus to a machine."""
    arrays, documents = {}, {}
    for split, docs in corpus.documents.items():
        cap = max_tokens.get(split)
        keep, total = [], 0
        for d in docs:
            if cap is not None and keep and total + d.length > cap:
                break
            keep.append(d)
            total += d.length
        src = corpus.arrays[split]
        parts, new_docs, start = [], [], 0
        for d in keep:
            parts.append(np.asarray(src[d.start:d.start + d.length + 1]))  # with its EOS
            new_docs.append(Document(d.name, start, d.length))
            start += d.length + 1
        arrays[split] = np.concatenate(parts) if parts else np.empty(0, dtype=src.dtype)
        documents[split] = new_docs
    return TokenCorpus(arrays, documents, dict(corpus.meta))
