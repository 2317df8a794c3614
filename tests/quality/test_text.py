"""Text cleaning shared by book reading and training data: BOM, line ends, Gutenberg header/footer."""

from dsla_serve.quality.text import clean_text, normalise, strip_gutenberg


def test_strip_gutenberg_variants():
    assert strip_gutenberg("head\n***START OF THE PROJECT GUTENBERG EBOOK X***\nbody\n***END OF THE PROJECT "
                           "GUTENBERG EBOOK X***\nfoot") == "body"
    assert strip_gutenberg("head\n  *** START OF THIS PROJECT GUTENBERG EBOOK X ***\nbody\nmore") == "body\nmore"
    assert strip_gutenberg("plain text\nno markers") == "plain text\nno markers"


def test_only_gutenberg_markers_cut_and_an_end_before_the_start_is_ignored():
    book = ("*** START OF THE PROJECT GUTENBERG EBOOK X ***\nPart one.\n*** END OF PART ONE ***\nPart two.\n"
            "*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlicence")
    assert strip_gutenberg(book) == "Part one.\n*** END OF PART ONE ***\nPart two."
    assert strip_gutenberg("*** END OF THE PROJECT GUTENBERG EBOOK X ***\n"
                           "*** START OF THE PROJECT GUTENBERG EBOOK X ***\nbody") == "body"
    assert strip_gutenberg("front matter\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlicence") == "front matter"


def test_normalise_drops_the_bom_and_unifies_line_ends():
    assert normalise("\ufeffa\r\nb\rc\n") == "a\nb\nc\n"


def test_text_without_markers_is_kept_and_lone_cr_normalised():
    assert clean_text("a\rb\r\nc\n\n") == "a\nb\nc"
    assert clean_text("no markers *** here") == "no markers *** here"


def test_clean_text_strips_a_crlf_gutenberg_file_to_its_body():
    raw = ("\ufeffThe Project Gutenberg EBook of Test\r\n*** START OF THIS PROJECT GUTENBERG EBOOK TEST ***\r\n"
           "\r\n  Chapter 1\r\nIt was a dark night.\r\n\r\n    *** END OF THE PROJECT GUTENBERG EBOOK TEST ***\r\n"
           "Section 1. General Terms of Use\r\n")
    assert clean_text(raw) == "Chapter 1\nIt was a dark night."
    assert strip_gutenberg(normalise(raw)) == "  Chapter 1\nIt was a dark night."  # books keep inner indentation
