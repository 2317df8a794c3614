"""Text cleaning shared by book reading (`quality.books`) and training data (`trainer.data`).

    clean_text(raw)   # BOM dropped, line ends LF, Gutenberg header/footer removed, outer blanks stripped

Pure Python: importable wherever the trainer's torch-only modules are (no pydantic, DeepSpeed or Ray).
"""

from __future__ import annotations

import re

# The marker lines of a Project Gutenberg file, e.g. `*** START OF THE PROJECT GUTENBERG EBOOK X ***`
# or `***END OF THIS PROJECT GUTENBERG EBOOK X***`. Requiring "PROJECT GUTENBERG" keeps a body line
# such as `*** END OF PART ONE ***` from cutting a book short.
_MARKER = re.compile(r"^\s*\*{3}\s*(START|END) OF (THE|THIS) PROJECT GUTENBERG", re.IGNORECASE)


def normalise(text: str) -> str:
    """Drop a leading UTF-8 byte-order mark and turn CRLF / CR line endings into LF."""
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def strip_gutenberg(text: str) -> str:
    """The body of a Gutenberg book: the lines strictly between the first `*** START OF` marker and
    the first `*** END OF` marker after it, without blank lines at either end.

    A text without a START marker keeps its beginning, one without an END marker its end, so plain
    text passes through unchanged (less leading and trailing newlines). Expects LF line ends.
    """
    lines = text.split("\n")
    markers = [(i, m.group(1).upper()) for i, line in enumerate(lines) if (m := _MARKER.match(line))]
    start = next((i + 1 for i, which in markers if which == "START"), 0)
    end = next((i for i, which in markers if which == "END" and i >= start), len(lines))
    return "\n".join(lines[start:end]).strip("\n")


def clean_text(text: str) -> str:
    """`normalise`, then `strip_gutenberg`, then strip outer whitespace: a document ready to tokenize."""
    return strip_gutenberg(normalise(text)).strip()
