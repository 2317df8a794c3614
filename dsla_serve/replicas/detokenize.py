"""Incremental detokenization and stop-string matching for one request.

Decoding a token alone loses context (SentencePiece drops a word's leading space at the start of a
string; a multi-byte character spans tokens), so text is decoded over a short window that starts a few
tokens back (the tail of the prompt at first) and only the part past the already-read tokens is new.
A window whose decoding ends in U+FFFD (an incomplete UTF-8 character) waits for the next token.
"""

from __future__ import annotations

PROMPT_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Turns generated token ids into text, one token at a time."""

    def __init__(self, tokenizer, prompt_ids: list[int]):
        self.tokenizer = tokenizer
        self.ids: list[int] = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        """Append one generated token; returns the new text it completes (possibly "")."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix_offset:self.read_offset])
        after = self._decode(self.ids[self.prefix_offset:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """The text of tokens still held back (an incomplete character), as decoded now."""
        before = self._decode(self.ids[self.prefix_offset:self.read_offset])
        after = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return after[len(before):]


class StopStringMatcher:
    """Finds the first stop string in a growing text and says how much text is safe to stream."""

    def __init__(self, stop: tuple[str, ...], include_in_output: bool):
        self.stop = stop
        self.include = include_in_output
        self.longest = max((len(s) for s in stop), default=0)

    def find(self, text: str, new_chars: int) -> tuple[str, str] | None:
        """Search the region that `new_chars` appended characters could complete.

        Returns (text cut at the earliest stop string, that string), or None.
        """
        if not self.stop or new_chars == 0:
            return None
        start = max(0, len(text) - new_chars - self.longest + 1)
        best = None
        for s in self.stop:
            i = text.find(s, start)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is None:
            return None
        i, s = best
        return (text[:i + len(s)] if self.include else text[:i]), s

    def holdback(self, text: str) -> int:
        """How many trailing characters might begin a stop string (not to be streamed yet)."""
        for n in range(min(self.longest - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0
