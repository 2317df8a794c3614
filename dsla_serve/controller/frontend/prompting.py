"""From an OpenAI request to what a replica runs: prompt token ids and `SamplingParams`.

The ingress tokenizes (applying the chat template for chat requests) so that it can refuse an
over-long prompt or an excessive `max_tokens` with a 400 before any replica is bothered. Token ids a
client sends are passed on as they are: the replica's engine checks every prompt against the
model's vocabulary (the one check), and its refusal comes back as a 400 (runs.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...replicas.sampling import SamplingParams
from .errors import APIError
from .protocol import ChatCompletionRequest, CompletionRequest


@dataclass(frozen=True)
class Limits:
    """What a request may ask for (from the policy's `http` and `model` sections).

    max_prompt_tokens: longest prompt; max_tokens_limit: largest `max_tokens`;
    max_model_len: prompt + completion (None: only the two limits above apply).
    """

    max_prompt_tokens: int
    max_tokens_limit: int
    max_model_len: int | None = None


def encode_prompt(tokenizer, prompt: str | list[int]) -> list[int]:
    """Token ids of a completion prompt: a string tokenized, token ids as given (the engine checks them)."""
    return list(tokenizer(prompt)["input_ids"]) if isinstance(prompt, str) else list(prompt)


def encode_chat(tokenizer, request: ChatCompletionRequest, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of the conversation rendered with the tokenizer's chat template (the assistant's turn
    opened unless `add_generation_prompt` is false)."""
    if not getattr(tokenizer, "chat_template", None):
        raise APIError(400, "this model's tokenizer has no chat template: use /v1/completions", param="messages",
                       code="no_chat_template")
    messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
                for m in request.messages]
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    except Exception as e:  # noqa: BLE001 - a template rejecting the conversation is the client's problem
        raise APIError(400, f"messages: the chat template rejected the conversation: {e}", param="messages",
                       code="invalid_value") from None
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise APIError(400, "messages: the conversation renders to no tokens", param="messages", code="invalid_value")
    return ids


def resolve_max_tokens(prompt_len: int, requested: int | None, limits: Limits, param: str = "max_tokens") -> int:
    """The number of tokens to generate, or APIError 400 naming the limit that is broken.

    `requested` None means "as many as allowed": up to max_tokens_limit and the context left.
    """
    if prompt_len > limits.max_prompt_tokens:
        raise APIError(400, f"the prompt has {prompt_len} tokens, more than the limit of {limits.max_prompt_tokens} "
                       "(http.max_prompt_tokens)", param="prompt" if param == "max_tokens" else "messages",
                       code="context_length_exceeded")
    room = None if limits.max_model_len is None else limits.max_model_len - prompt_len
    if requested is None:
        allowed = limits.max_tokens_limit if room is None else min(limits.max_tokens_limit, room)
        if allowed < 1:
            raise APIError(400, f"the prompt ({prompt_len} tokens) leaves no room to generate within the context "
                           f"length {limits.max_model_len}", param=param, code="context_length_exceeded")
        return allowed
    if requested > limits.max_tokens_limit:
        raise APIError(400, f"{param} {requested} is above this server's limit of {limits.max_tokens_limit} "
                       "(http.max_tokens_limit)", param=param, code="max_tokens_too_large")
    if room is not None and requested > room:
        raise APIError(400, f"the prompt ({prompt_len} tokens) + {param} ({requested}) = {prompt_len + requested} "
                       f"is more than the context length {limits.max_model_len}", param=param,
                       code="context_length_exceeded")
    return requested


def sampling_params(request: CompletionRequest | ChatCompletionRequest, max_tokens: int) -> SamplingParams:
    """What the replica samples with; the engine's own validation speaks as a 400 before the request
    leaves the ingress."""
    if isinstance(request, CompletionRequest):
        logprobs, echo = request.logprobs, request.echo
    else:
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        echo = False
    try:
        return SamplingParams(max_tokens=max_tokens, temperature=float(request.temperature),
                              top_p=float(request.top_p), top_k=request.top_k, seed=request.seed,
                              stop=request.stop_list() or None, stop_token_ids=list(request.stop_token_ids or []),
                              ignore_eos=request.ignore_eos, logprobs=logprobs, echo=echo)
    except ValueError as e:
        message = str(e).removeprefix("SamplingParams.")
        param = message.split(" ", 1)[0] if message[:1].isalpha() else None
        raise APIError(400, message, param=param, code="invalid_value") from None
