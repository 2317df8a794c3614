"""An engine request as a stream of `StreamDelta`s: what every replica streams to the ingress. No Ray here.

    async for delta in stream_deltas(engine, GenerateRequest(request_id, prompt_ids, SamplingParams(...))):
        ...   # delta.token_ids, delta.text, delta.logprobs with delta.token_texts, delta.finish_reason

The replica is where token ids become text, once: the new text of each delta, the prompt's text when
asked, and, with log-probabilities, the text of every token they name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from .messages import GenerateRequest, StreamDelta
from .outputs import RequestOutput


class TokenTexts:
    """Token id -> its text alone (the strings log-probabilities are keyed by in responses), memoised."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def of(self, ids: Iterable[int]) -> dict[int, str]:
        out = {}
        for token_id in ids:
            text = self._cache.get(token_id)
            if text is None:
                text = self._cache[token_id] = self.tokenizer.decode([token_id])
            out[token_id] = text
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
    QueueFullError / ValueError (bad token ids, PromptTooLongError) on the first iteration, before any
    delta; when the consumer stops early (a client that went away) the request is aborted, freeing its slot.
    `texts`: a memo shared across requests (default: one for this request)."""
    stream = engine.add_request(request.prompt_ids, request.sampling, request_id=request.request_id)
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
