"""From the replicas' stream deltas to OpenAI responses, whole or as server-sent-event chunks.

A replica streams `StreamDelta`s (replicas/messages.py): new token ids and text, log-probabilities with
the `TokenText` (text and bytes) of every token they name, the prompt's log-probabilities and text on
the first delta when asked, and the finish reason. `Choice` accumulates them for one prompt; the
functions below render completions (text, with echo and the legacy logprobs shape) and chat
completions (message, with the chat logprobs shape). Nothing here decodes a token.

How a token is named in log-probabilities (`TokenNames`): by its text, where a token whose bytes are
not valid UTF-8 alone is "bytes:\\xe2\\x80" (OpenAI's spelling), so distinct byte-level tokens have
distinct names; with `return_tokens_as_token_ids` (vLLM's request field) as "token_id:<id>". The
legacy completions shape keys `top_logprobs` by name, so should two distinct tokens of one position
still share a text, the less likely one is keyed "token_id:<id>" rather than overwrite the other.
Chat's list shape carries each token's exact `bytes`.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field
from typing import Any

from ...replicas.messages import StreamDelta, TokenLogprobs, TokenText
from .protocol import (AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionResponse,
                       ChatDelta, ChatLogprobs, CompletionChoice, CompletionLogprobs, CompletionResponse, TokenLogprob,
                       TopLogprob, Usage)


@dataclass
class Choice:
    """Everything one prompt's request produced so far."""

    index: int
    prompt_ids: list[int]
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    prompt_text: str | None = None
    token_texts: dict[int, TokenText] = field(default_factory=dict)
    finish_reason: str | None = None
    error: str | None = None
    depth: int | None = None

    def add(self, delta: StreamDelta) -> None:
        self.text += delta.text
        self.token_ids += delta.token_ids
        if delta.logprobs:
            self.logprobs += delta.logprobs
        if delta.prompt_logprobs is not None:
            self.prompt_logprobs = delta.prompt_logprobs
        if delta.prompt_text is not None:
            self.prompt_text = delta.prompt_text
        self.token_texts.update(delta.token_texts)
        self.finish_reason = delta.finish_reason or self.finish_reason
        self.error = delta.error or self.error
        self.depth = delta.depth


def usage_of(choices: list[Choice]) -> Usage:
    return Usage.of(sum(len(c.prompt_ids) for c in choices), sum(len(c.token_ids) for c in choices))


def _finish(reason: str | None) -> str | None:
    """OpenAI knows stop and length; an aborted request ended early, like a stop."""
    return {"abort": "stop", "error": "stop"}.get(reason, reason) if reason else None


# -------------------------------------------------------------------------------------------------
# completions
# -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenNames:
    """Names tokens in log-probabilities: by text, or as "token_id:<id>" (`as_ids`)."""

    texts: dict[int, TokenText]
    as_ids: bool = False

    def name(self, token_id: int) -> str:
        return f"token_id:{token_id}" if self.as_ids else self.texts[token_id].text

    def raw(self, token_id: int) -> bytes:
        return self.texts[token_id].raw

    def keyed(self, entry: TokenLogprobs) -> dict[str, float]:
        """{name: logprob} for one position, most likely first; a name already taken by a more likely
        token gives way to "token_id:<id>"."""
        out: dict[str, float] = {}
        for token_id, logprob in sorted(entry.items(), key=lambda kv: -kv[1]):
            name = self.name(token_id)
            out[name if name not in out else f"token_id:{token_id}"] = float(logprob)
        return out


def completion_logprobs(names: TokenNames, ids: list[int], entries: list[TokenLogprobs | None],
                        start_offset: int) -> CompletionLogprobs:
    """The legacy shape for tokens `ids` with their {id: logprob} entries (None: no logprob, the
    first prompt token); offsets (characters of the text before each token) continue from `start_offset`."""
    out = CompletionLogprobs()
    offset = start_offset
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for tid, entry in zip(ids, entries):
        out.tokens.append(names.name(tid))
        out.text_offset.append(offset)
        offset += len(text.decode(names.raw(tid)))
        if entry is None:
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            continue
        out.token_logprobs.append(float(entry[tid]) if tid in entry else None)
        out.top_logprobs.append(names.keyed(entry))
    return out


def _prompt_entries(choice: Choice) -> list[TokenLogprobs | None]:
    entries = list(choice.prompt_logprobs or [])
    return entries + [None] * (len(choice.prompt_ids) - len(entries))


def completion_response(request_id: str, created: int, model: str, choices: list[Choice], *, echo: bool,
                        logprobs: int | None, prompt_texts: list[str], token_ids: bool = False) -> CompletionResponse:
    rendered = []
    for choice, prompt_text in zip(choices, prompt_texts):
        lp = None
        names = TokenNames(choice.token_texts, token_ids)
        if logprobs is not None:
            if echo:
                lp = completion_logprobs(names, choice.prompt_ids + choice.token_ids,
                                         _prompt_entries(choice) + choice.logprobs, 0)
            else:
                lp = completion_logprobs(names, choice.token_ids, choice.logprobs, 0)
        rendered.append(CompletionChoice(index=choice.index, text=(prompt_text if echo else "") + choice.text,
                                         logprobs=lp, finish_reason=_finish(choice.finish_reason)))
    return CompletionResponse(id=request_id, created=created, model=model, choices=rendered, usage=usage_of(choices),
                              system_fingerprint=_fingerprint(choices))


class CompletionStream:
    """Chunks of a streamed completion: one per delta, the prompt first when echoing."""

    def __init__(self, request_id: str, created: int, model: str, *, echo: bool, logprobs: int | None,
                 token_ids: bool = False):
        self.request_id, self.created, self.model = request_id, created, model
        self.echo, self.logprobs, self.token_ids = echo, logprobs, token_ids
        self.offsets: dict[int, int] = {}

    def chunk(self, choice: Choice, delta: StreamDelta, prompt_text: str) -> str:
        text, lp = delta.text, None
        ids = delta.token_ids
        offset = self.offsets.get(choice.index, 0)
        first = choice.index not in self.offsets
        if first and self.echo:
            text = prompt_text + text
        if self.logprobs is not None:
            entries = list(delta.logprobs or [None] * len(ids))
            if first and self.echo:
                ids, entries = choice.prompt_ids + ids, _prompt_entries(choice) + entries
            lp = completion_logprobs(TokenNames(choice.token_texts, self.token_ids), ids, entries, offset)
        self.offsets[choice.index] = offset + len(text)
        body = CompletionResponse(id=self.request_id, created=self.created, model=self.model, choices=[
            CompletionChoice(index=choice.index, text=text, logprobs=lp,
                             finish_reason=_finish(delta.finish_reason))],
            system_fingerprint=_fingerprint([choice]))
        return sse(body.model_dump())

    def usage(self, choices: list[Choice]) -> str:
        body = CompletionResponse(id=self.request_id, created=self.created, model=self.model, choices=[],
                                  usage=usage_of(choices), system_fingerprint=_fingerprint(choices))
        return sse(body.model_dump())


# -------------------------------------------------------------------------------------------------
# chat completions
# -------------------------------------------------------------------------------------------------
def chat_logprobs(names: TokenNames, ids: list[int], entries: list[TokenLogprobs], top: int) -> ChatLogprobs:
    content = []
    for tid, entry in zip(ids, entries):
        ranked = sorted(entry.items(), key=lambda kv: -kv[1])[:top]
        content.append(TokenLogprob(
            token=names.name(tid), logprob=float(entry.get(tid, float("-inf"))), bytes=list(names.raw(tid)),
            top_logprobs=[TopLogprob(token=names.name(t), logprob=float(lp), bytes=list(names.raw(t)))
                          for t, lp in ranked]))
    return ChatLogprobs(content=content)


def chat_response(request_id: str, created: int, model: str, choice: Choice, *, logprobs: bool,
                  top_logprobs: int, token_ids: bool = False) -> ChatCompletionResponse:
    lp = None
    if logprobs:
        lp = chat_logprobs(TokenNames(choice.token_texts, token_ids), choice.token_ids, choice.logprobs, top_logprobs)
    return ChatCompletionResponse(id=request_id, created=created, model=model, choices=[
        ChatChoice(index=0, message=AssistantMessage(content=choice.text), logprobs=lp,
                   finish_reason=_finish(choice.finish_reason))], usage=usage_of([choice]),
        system_fingerprint=_fingerprint([choice]))


class ChatStream:
    """Chunks of a streamed chat completion: the role first, then content deltas, then usage."""

    def __init__(self, request_id: str, created: int, model: str, *, logprobs: bool, top_logprobs: int,
                 token_ids: bool = False, choice: Choice | None = None):
        """`choice`: the request's (its depth names every chunk in `system_fingerprint`)."""
        self.request_id, self.created, self.model = request_id, created, model
        self.logprobs, self.top_logprobs, self.token_ids = logprobs, top_logprobs, token_ids
        self.choice = choice

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
        body = ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model, choices=choices,
                                   usage=usage,
                                   system_fingerprint=_fingerprint([self.choice]) if self.choice is not None else None)
        data = body.model_dump()
        for choice in data["choices"]:  # OpenAI sends only the delta fields that are set
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
        return sse(data)

    def role(self) -> str:
        return self._chunk([ChatChunkChoice(index=0, delta=ChatDelta(role="assistant", content=""))])

    def chunk(self, choice: Choice, delta: StreamDelta) -> str:
        lp = None
        if self.logprobs and delta.logprobs:
            lp = chat_logprobs(TokenNames(choice.token_texts, self.token_ids), delta.token_ids, delta.logprobs,
                               self.top_logprobs)
        text = delta.text
        return self._chunk([ChatChunkChoice(index=0, delta=ChatDelta(content=text) if text else ChatDelta(),
                                            logprobs=lp, finish_reason=_finish(delta.finish_reason))])

    def usage(self, choices: list[Choice]) -> str:
        return self._chunk([], usage_of(choices))


# -------------------------------------------------------------------------------------------------
def sse(data: dict[str, Any]) -> str:
    """One server-sent event carrying `data` as JSON."""
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def _fingerprint(choices: list[Choice]) -> str | None:
    """`dsla-depth-<d>`: the conversion depth that served the request (OpenAI's system_fingerprint slot)."""
    depths = sorted({c.depth for c in choices if c.depth is not None})
    return "dsla-depth-" + "+".join(str(d) for d in depths) if depths else None
