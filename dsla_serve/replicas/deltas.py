"""An engine request as a stream of `StreamDelta`s: what every replica streams to the ingress. No Ray here.

    async for delta in stream_deltas(engine, GenerateRequest(request_id, prompt_ids, SamplingParams(...))):
        ...   # delta.token_ids, delta.text, delta.logprobs with delta.token_texts, delta.finish_reason

The replica is where token ids become text, once: the new text of each delta, the prompt's text when
asked, and, with log-probabilities, the text of every token they name.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterable

from .messages import GenerateRequest, StreamDelta, TokenText
from .outputs import RequestOutput

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet() -> dict[str, int]:
    """The GPT-2 byte-level mapping, character -> byte: printable bytes stand for themselves, the others
    for the characters from U+0100 on (what a ByteLevel decoder undoes)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _decoder_types(tokenizer) -> set[str]:
    """The types of the fast tokenizer's decoder (and of the decoders of a Sequence), e.g. {"ByteLevel"}."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return {d.get("type") for d in parts if isinstance(d, dict)}


def token_text(raw: bytes) -> str:
    """A token's text in responses: its bytes as text, or "bytes:\\xNN..." when they are not valid UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class TokenTexts:
    """Token id -> `TokenText`, its bytes and its text alone (what log-probabilities are keyed by in
    responses), memoised.

    The bytes are the token's own: for a byte-level BPE (GPT-2, Llama 3, SmolLM2, the tiny byte
    tokenizer) its vocabulary string through the byte alphabet; for a SentencePiece-style one, "▁" as a
    space and "<0xNN>" as that byte; special tokens as their text; otherwise the decoded text.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._cache: dict[int, TokenText] = {}
        types = _decoder_types(tokenizer)
        self._byte_level = _byte_level_alphabet() if "ByteLevel" in types else None
        self._pieces = bool(types & {"Metaspace", "ByteFallback", "Replace"})
        self._special = set(getattr(tokenizer, "added_tokens_decoder", {}) or ())

    def raw(self, token_id: int) -> bytes:
        """The bytes token `token_id` contributes to a text."""
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:
            return b""
        if token_id in self._special:
            return piece.encode("utf-8")
        if self._byte_level is not None and all(c in self._byte_level for c in piece):
            return bytes(self._byte_level[c] for c in piece)
        if self._pieces:
            match = _BYTE_FALLBACK.fullmatch(piece)
            return bytes([int(match.group(1), 16)]) if match else piece.replace("▁", " ").encode("utf-8")
        return self.tokenizer.decode([token_id]).encode("utf-8")

    def of(self, ids: Iterable[int]) -> dict[int, TokenText]:
        out = {}
        for token_id in ids:
            entry = self._cache.get(token_id)
            if entry is None:
                raw = self.raw(token_id)
                entry = self._cache[token_id] = TokenText(text=token_text(raw), raw=raw)
            out[token_id] = entry
        return out


def output_delta(out: RequestOutput, first: bool, depth: int, texts: TokenTexts | None,
                 prompt_text: str | None = None) -> StreamDelta:
    """The part of an engine output that is new since the previous output of its stream.

    `texts`: where token texts come from (None: an engine without a tokenizer, no token texts).
    `prompt_text`: put on the first delta.
    """
    completion = out.outputs[0]
    new_ids = list(completion.new_token_ids)
    logprobs = prompt_logprobs = None
    named: set[int] = set()
    if completion.logprobs is not None:  # one entry per generated token: the new ones are the last
        logprobs = [dict(e) for e in completion.logprobs[len(completion.logprobs) - len(new_ids):]]
        named.update(new_ids)
        for entry in logprobs:
            named.update(entry)
    if first and out.prompt_logprobs is not None:
        prompt_logprobs = [None if e is None else dict(e) for e in out.prompt_logprobs]
        named.update(out.prompt_token_ids)
        for entry in prompt_logprobs:
            named.update(entry or ())
    return StreamDelta(request_id=out.request_id, token_ids=new_ids, text=completion.new_text,
                       prompt_tokens=len(out.prompt_token_ids), depth=depth, finish_reason=completion.finish_reason,
                       stop_reason=completion.stop_reason, error=out.error, logprobs=logprobs,
                       prompt_logprobs=prompt_logprobs, prompt_text=prompt_text if first else None,
                       token_texts=texts.of(sorted(named)) if texts is not None and named else {})


async def stream_deltas(engine, request: GenerateRequest, texts: TokenTexts | None = None
                        ) -> AsyncIterator[StreamDelta]:
    """Queue `request` on a started `engine` and yield its deltas (those with content). Raises
    QueueFullError / ValueError (bad token ids, PromptTooLongError) / DepthUnavailableError (the engine
    does not serve `request.depth` now) on the first iteration, before any delta; when the consumer stops early (a client that went away) the request is aborted, freeing its slot.
    `texts`: a memo shared across requests (default: one for this request)."""
    stream = engine.add_request(request.prompt_ids, request.sampling, request_id=request.request_id,
                                depth=request.depth)
    if texts is None and engine.tokenizer is not None:
        texts = TokenTexts(engine.tokenizer)
    prompt_text = None
    if request.return_prompt_text and engine.tokenizer is not None:
        prompt_text = engine.tokenizer.decode(request.prompt_ids)
    first = True
    try:
        async for out in stream:
            delta = output_delta(out, first, engine.depth, texts, prompt_text)
            if delta.has_content:
                first = False
                yield delta
    finally:
        if not stream.finished:
            stream.abort()
