"""Fixtures of the quality tests: small synthetic Gutenberg-style books, a BPE tokenizer trained on
them and their token corpus (built once per session; nothing is read from ../shared)."""

from __future__ import annotations

import random

import pytest

WORDS = ("the of and to a in that he was it his her you with as for had she on at by not be but "
         "house river night morning letter garden window captain mother father road village ship "
         "said went came looked heard thought answered walked turned opened").split()


def write_book(path, seed: int, sentences: int = 700, crlf: bool = True, bom: bool = True) -> str:
    """A fake Gutenberg file; returns the body text that stripping must recover."""
    rng = random.Random(seed)
    lines = []
    for _ in range(sentences):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + ".")
    body = "\n".join(lines)
    text = (f"The Project Gutenberg eBook of Book {seed}\nLicense blah\n"
            f"*** START OF THE PROJECT GUTENBERG EBOOK BOOK {seed} ***\n{body}\n"
            f"*** END OF THE PROJECT GUTENBERG EBOOK BOOK {seed} ***\nFooter: donate to the foundation\n")
    if crlf:
        text = text.replace("\n", "\r\n")
    path.write_bytes((("\ufeff" if bom else "") + text).encode("utf-8"))
    return body


@pytest.fixture(scope="session")
def books_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("books")
    for i in range(5):
        write_book(d / f"{i:03d}_book.txt", seed=i, crlf=i % 2 == 0, bom=i != 3)
    return d


@pytest.fixture(scope="session")
def split(books_dir):
    from dsla_serve.quality.books import list_books, make_split

    return make_split(list_books(books_dir), num_validation=2, seed=0)


@pytest.fixture(scope="session")
def tokenizer(books_dir, split):
    from dsla_serve.quality.books import read_book
    from recipes.teacher.train_tokenizer import train_bpe

    return train_bpe([read_book(books_dir / n) for n in split["train"]], vocab_size=320, progress=False)


@pytest.fixture(scope="session")
def token_corpus_dir(tmp_path_factory, books_dir, split, tokenizer):
    from dsla_serve.quality.corpus import build_token_corpus, save_token_corpus

    out = tmp_path_factory.mktemp("corpus")
    save_token_corpus(build_token_corpus(books_dir, split, tokenizer, progress=False), out)
    return out
