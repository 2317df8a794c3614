"""From the replicas' stream deltas to OpenAI responses, whole or as server-sent-event chunks.

A replica streams `StreamDelta`s (replicas/messages.py): new token ids and text, log-probabilities with
the text of every token they name, the prompt's log-probabilities and text on the first delta when
asked, and the finish reason. `Choice` accumulates them for one prompt; the functions below render
completions (text, with echo and the legacy logprobs shape) and chat completions (message, with the
chat logprobs shape). Nothing here decodes a token: the texts come with the deltas.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ...replicas.messages import StreamDelta, TokenLogprobs
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
    token_texts: dict[int, str] = field(default_factory=dict)
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
def completion_logprobs(tokens: dict[int, str], ids: list[int], entries: list[TokenLogprobs | None],
                        start_offset: int) -> CompletionLogprobs:
    """The legacy shape for tokens `ids` with their {id: logprob} entries (None: no logprob, the
    first prompt token); `tokens`: the text of each id; offsets continue from `start_offset`."""
    out = CompletionLogprobs()
    offset = start_offset
    for tid, entry in zip(ids, entries):
        piece = tokens[tid]
        out.tokens.append(piece)
        out.text_offset.append(offset)
        offset += len(piece)
        if entry is None:
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            continue
        out.token_logprobs.append(float(entry[tid]) if tid in entry else None)
        out.top_logprobs.append({tokens[t]: float(lp) for t, lp in entry.items()})
    return out


def _prompt_entries(choice: Choice) -> list[TokenLogprobs | None]:
    entries = list(choice.prompt_logprobs or [])
    return entries + [None] * (len(choice.prompt_ids) - len(entries))


def completion_response(request_id: str, created: int, model: str, choices: list[Choice], *, echo: bool,
                        logprobs: int | None, prompt_texts: list[str]) -> CompletionResponse:
    rendered = []
    for choice, prompt_text in zip(choices, prompt_texts):
        lp = None
        if logprobs is not None:
            if echo:
                lp = completion_logprobs(choice.token_texts, choice.prompt_ids + choice.token_ids,
                                         _prompt_entries(choice) + choice.logprobs, 0)
            else:
                lp = completion_logprobs(choice.token_texts, choice.token_ids, choice.logprobs, 0)
        rendered.append(CompletionChoice(index=choice.index, text=(prompt_text if echo else "") + choice.text,
                                         logprobs=lp, finish_reason=_finish(choice.finish_reason)))
    return CompletionResponse(id=request_id, created=created, model=model, choices=rendered, usage=usage_of(choices),
                              system_fingerprint=_fingerprint(choices))


class CompletionStream:
    """Chunks of a streamed completion: one per delta, the prompt first when echoing."""

    def __init__(self, request_id: str, created: int, model: str, *, echo: bool, logprobs: int | None):
        self.request_id, self.created, self.model = request_id, created, model
        self.echo, self.logprobs = echo, logprobs
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
            lp = completion_logprobs(choice.token_texts, ids, entries, offset)
        self.offsets[choice.index] = offset + len(text)
        body = CompletionResponse(id=self.request_id, created=self.created, model=self.model, choices=[
            CompletionChoice(index=choice.index, text=text, logprobs=lp,
                             finish_reason=_finish(delta.finish_reason))],
            system_fingerprint=_fingerprint([choice]))
        return sse(body.model_dump())

    def usage(self, choices: list[Choice]) -> str:
        body = CompletionResponse(id=self.request_id, created=self.created, model=self.model, choices=[],
                                  usage=usage_of(choices))
        return sse(body.model_dump())


# -------------------------------------------------------------------------------------------------
# chat completions
# -------------------------------------------------------------------------------------------------
def chat_logprobs(tokens: dict[int, str], ids: list[int], entries: list[TokenLogprobs], top: int) -> ChatLogprobs:
    content = []
    for tid, entry in zip(ids, entries):
        piece = tokens[tid]
        ranked = sorted(entry.items(), key=lambda kv: -kv[1])[:top]
        content.append(TokenLogprob(
            token=piece, logprob=float(entry.get(tid, float("-inf"))), bytes=list(piece.encode("utf-8")),
            top_logprobs=[TopLogprob(token=tokens[t], logprob=float(lp), bytes=list(tokens[t].encode("utf-8")))
                          for t, lp in ranked]))
    return ChatLogprobs(content=content)


def chat_response(request_id: str, created: int, model: str, choice: Choice, *, logprobs: bool,
                  top_logprobs: int) -> ChatCompletionResponse:
    lp = chat_logprobs(choice.token_texts, choice.token_ids, choice.logprobs, top_logprobs) if logprobs else None
    return ChatCompletionResponse(id=request_id, created=created, model=model, choices=[
        ChatChoice(index=0, message=AssistantMessage(content=choice.text), logprobs=lp,
                   finish_reason=_finish(choice.finish_reason))], usage=usage_of([choice]),
        system_fingerprint=_fingerprint([choice]))


class ChatStream:
    """Chunks of a streamed chat completion: the role first, then content deltas, then usage."""

    def __init__(self, request_id: str, created: int, model: str, *, logprobs: bool, top_logprobs: int):
        self.request_id, self.created, self.model = request_id, created, model
        self.logprobs, self.top_logprobs = logprobs, top_logprobs

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None, depth: int | None = None) -> str:
        body = ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model, choices=choices,
                                   usage=usage, system_fingerprint=None if depth is None else f"dsla-depth-{depth}")
        data = body.model_dump()
        for choice in data["choices"]:  # OpenAI sends only the delta fields that are set
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
        return sse(data)

    def role(self) -> str:
        return self._chunk([ChatChunkChoice(index=0, delta=ChatDelta(role="assistant", content=""))])

    def chunk(self, choice: Choice, delta: StreamDelta) -> str:
        lp = None
        if self.logprobs and delta.logprobs:
            lp = chat_logprobs(choice.token_texts, delta.token_ids, delta.logprobs, self.top_logprobs)
        text = delta.text
        return self._chunk([ChatChunkChoice(index=0, delta=ChatDelta(content=text) if text else ChatDelta(),
                                            logprobs=lp, finish_reason=_finish(delta.finish_reason))],
                           depth=choice.depth)

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
