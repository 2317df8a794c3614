"""Train the teacher's byte-level BPE tokenizer on the training books, then tokenize the corpus.

    python -m recipes.teacher.train_tokenizer                 # full: 8192 tokens, all books of split.json
    python -m recipes.teacher.train_tokenizer --smoke         # 2 training books, 512 tokens (seconds)

Steps: (1) read the book split (a committed JSON listing which whole books are held out; created
with a seeded shuffle if the file does not exist); (2) strip Gutenberg headers and footers, BOM and
CRLF; (3) train BPE on the TRAINING books only (digits split one per token, so numbers such as
passkeys read the same everywhere); (4) save a Hugging Face tokenizer (`PreTrainedTokenizerFast`);
(5) tokenize train and validation books into a token corpus (`dsla_serve.quality.corpus`), the few-MB
folder that training and evaluation read, also on machines that cannot see the text.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dsla_serve.quality.books import list_books, load_split, make_split, read_book, save_split
from dsla_serve.quality.corpus import build_token_corpus, save_token_corpus

from . import paths

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recipes.teacher.train_tokenizer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--books", type=Path, default=paths.BOOKS,
                   help="folder of Gutenberg .txt books (default: %(default)s)")
    p.add_argument("--split", type=Path, default=paths.SPLIT,
                   help="book split JSON; created (seeded) if missing (default: %(default)s)")
    p.add_argument("--num-validation", type=int, default=5, help="books held out when creating the split")
    p.add_argument("--seed", type=int, default=0, help="seed of the split when it is created")
    p.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size, specials included")
    p.add_argument("--min-frequency", type=int, default=2, help="a pair merges only if it occurs this often")
    p.add_argument("--max-books", type=int, default=None, help="use only the first N books of each split")
    p.add_argument("--out", type=Path, default=paths.TOKENIZER, help="tokenizer output folder (default: %(default)s)")
    p.add_argument("--corpus-out", type=Path, default=paths.DATA,
                   help="token corpus output folder; 'none' to skip (default: %(default)s)")
    p.add_argument("--smoke", action="store_true", help="tiny settings: 2 books per split, vocabulary 512")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def train_bpe(texts: list[str], vocab_size: int, min_frequency: int = 2, progress: bool = True):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts` (deterministic for the same input)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    pad, bos, eos = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   model_max_length=1 << 20, clean_up_tokenization_spaces=False)


def get_split(args) -> dict:
    if args.split.is_file():
        return load_split(args.split, args.books)
    split = make_split(list_books(args.books), args.num_validation, args.seed)
    save_split(split, args.split)
    print(f"created the book split {args.split}: {len(split['train'])} train, {len(split['validation'])} validation")
    return split


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.max_books = args.max_books or 2
        args.vocab_size = min(args.vocab_size, 512)
    progress = not args.quiet
    t0 = time.perf_counter()
    split = get_split(args)
    if args.max_books:
        split = {**split, "train": split["train"][:args.max_books], "validation": split["validation"][:args.max_books]}
    texts = [read_book(args.books / n) for n in split["train"]]
    print(f"training BPE ({args.vocab_size} tokens) on {len(texts)} training books, "
          f"{sum(map(len, texts)) / 1e6:.1f} M characters")
    tokenizer = train_bpe(texts, args.vocab_size, args.min_frequency, progress)
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(args.out)
    print(f"saved the tokenizer to {args.out} ({len(tokenizer)} tokens) in {time.perf_counter() - t0:.0f} s")
    if str(args.corpus_out).lower() != "none":
        corpus = build_token_corpus(args.books, split, tokenizer, progress=progress)
        save_token_corpus(corpus, args.corpus_out)
        sizes = ", ".join(f"{s} {corpus.num_tokens(s) / 1e6:.2f} M tokens" for s in corpus.splits())
        print(f"saved the token corpus to {args.corpus_out}: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
