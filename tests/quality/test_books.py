"""Book reading (Gutenberg stripping, BOM, CRLF) and the seeded split by whole book."""

import json

import pytest

from dsla_serve.quality.books import load_split, make_split, read_book, save_split

from .conftest import write_book


@pytest.mark.parametrize("crlf,bom", [(True, True), (False, False), (True, False)])
def test_read_book_recovers_the_body(tmp_path, crlf, bom):
    body = write_book(tmp_path / "b.txt", seed=3, sentences=20, crlf=crlf, bom=bom)
    text = read_book(tmp_path / "b.txt")
    assert text == body
    assert "\r" not in text and "\ufeff" not in text and "Gutenberg" not in text


def test_empty_body_and_missing_file_are_named(tmp_path):
    (tmp_path / "e.txt").write_text("*** START OF THE PROJECT GUTENBERG EBOOK E ***\n\n*** END OF THE PROJECT "
                                    "GUTENBERG EBOOK E ***\n")
    with pytest.raises(ValueError, match="e.txt has no text"):
        read_book(tmp_path / "e.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_book(tmp_path / "nope.txt")


def test_split_is_seeded_disjoint_and_by_whole_book(tmp_path):
    names = [f"{i:02d}.txt" for i in range(20)]
    a, b = make_split(names, 4, seed=7), make_split(list(reversed(names)), 4, seed=7)
    assert a == b and len(a["validation"]) == 4 and len(a["train"]) == 16
    assert sorted(a["train"] + a["validation"]) == names
    assert make_split(names, 4, seed=8)["validation"] != a["validation"]
    save_split(a, tmp_path / "s.json")
    assert load_split(tmp_path / "s.json") == json.loads((tmp_path / "s.json").read_text()) == a
    with pytest.raises(FileNotFoundError, match="missing from"):
        load_split(tmp_path / "s.json", books_dir=tmp_path)


def test_committed_teacher_split_holds_out_five_books():
    from recipes.teacher import paths

    split = load_split(paths.SPLIT)
    assert len(split["validation"]) == 5 and len(split["train"]) == 45
    assert not set(split["train"]) & set(split["validation"])
