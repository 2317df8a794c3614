import json

import pytest

from dsla_serve.model.tiny_tokenizer import build_byte_tokenizer
from dsla_serve.trainer.config import DataConfig
from dsla_serve.trainer.data import (DataError, Document, build_dataset, read_documents, segment_document,
                                     split_documents)

GUTENBERG = (
    "\ufeffThe Project Gutenberg EBook of Test, by Nobody\r\n"
    "This eBook is for the use of anyone anywhere.\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK TEST ***\r\n"
    "\r\n"
    "Chapter 1\r\n"
    "It was a dark night.\r\n"
    "\r\n"
    "            *** END OF THE PROJECT GUTENBERG EBOOK TEST ***\r\n"
    "Section 1. General Terms of Use and Redistributing\r\n"
)


def test_gutenberg_boilerplate_bom_and_crlf_are_removed(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes(GUTENBERG.encode("utf-8"))
    [doc] = read_documents([path])
    assert doc.text == "Chapter 1\nIt was a dark night."
    assert doc.source == str(path)


def test_jsonl_lines_are_documents(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "first\r\ndoc"}) + "\n\n" + json.dumps({"text": "second", "id": 2}) + "\n")
    docs = read_documents([path])
    assert [d.text for d in docs] == ["first\ndoc", "second"]
    assert docs[1].source == f"{path}:3"


def test_folders_are_searched_for_txt_and_jsonl_only(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("alpha")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "beta"}) + "\n")
    (tmp_path / "MANIFEST.tsv").write_text("not\ttext")
    (tmp_path / "empty.txt").write_text("  \n")
    assert sorted(d.text for d in read_documents([tmp_path])) == ["alpha", "beta"]


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "missing.txt", "does not exist"),
    (lambda p: (p / "bin.txt").write_bytes(b"ok \xff\xfe bad") and p / "bin.txt", "is not UTF-8 text"),
    (lambda p: (p / "d").mkdir() or p / "d", "holds no *.txt or *.jsonl files"),
    (lambda p: (p / "e.txt").write_text("\n\n") and p / "e.txt", "no text found"),
    (lambda p: (p / "x.jsonl").write_text('{"txt": 1}\n') and p / "x.jsonl", 'x.jsonl:1: each line must be'),
    (lambda p: (p / "y.jsonl").write_text('{oops\n') and p / "y.jsonl", "y.jsonl:1: not valid JSON"),
])
def test_unusable_paths_get_clear_errors(tmp_path, setup, message):
    path = setup(tmp_path)
    with pytest.raises(DataError) as info:
        read_documents([path])
    assert message in str(info.value) and str(path) in str(info.value)


def test_split_is_by_document_deterministic_and_disjoint():
    docs = [Document(f"d{i}", f"text {i}") for i in range(20)]
    train, val = split_documents(docs, 0.2, seed=3)
    assert len(val) == 4 and len(train) == 16
    assert {d.source for d in train}.isdisjoint(d.source for d in val)
    assert split_documents(docs, 0.2, seed=3) == (train, val)
    assert split_documents(docs, 0.2, seed=4) != (train, val)


def test_segmenting_cuts_at_line_breaks_and_keeps_all_text():
    text = "\n".join(f"line number {i}" for i in range(500))
    pieces = segment_document(Document("f", text), 1000)
    assert "".join(p.text for p in pieces) == text
    assert all(len(p.text) <= 1000 for p in pieces) and all(p.text.endswith("\n") for p in pieces[:-1])


def test_dataset_packs_sequences_and_never_mixes_splits(corpus):
    tok = build_byte_tokenizer()
    cfg = DataConfig(paths=[corpus], seq_len=16, val_fraction=0.25, max_train_tokens=800)
    data = build_dataset(cfg, tok, seed=0)
    assert data.train.shape == (50, 16) and data.val.shape[1] == 16
    assert data.info["val_documents"] == 3 and data.info["train_documents"] == 9
    val_text = "".join(d.read_text() for d in sorted(corpus.iterdir()) if str(d) in data.info["val_sources"])
    decoded_val = tok.decode(data.val.flatten().tolist(), skip_special_tokens=True)
    assert decoded_val[:100] in val_text  # validation tokens come from the held-out files
    assert tok.decode(data.train[0].tolist()) not in val_text


def test_single_document_corpus_is_segmented_before_the_split(tmp_path):
    (tmp_path / "one.txt").write_text("\n".join(f"verse {i} of the only book" for i in range(3000)))
    data = build_dataset(DataConfig(paths=[tmp_path / "one.txt"], seq_len=64), build_byte_tokenizer(), seed=0)
    assert data.info["files_documents"] == 1 and data.info["documents"] > 2 and data.val.shape[0] > 0


def test_too_little_data_for_a_sequence_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("short")
    (tmp_path / "b.txt").write_text("tiny")
    with pytest.raises(DataError, match="fewer than seq_len=64 tokens"):
        build_dataset(DataConfig(paths=[tmp_path], seq_len=64), build_byte_tokenizer(), seed=0)
