"""The OpenAI wire protocol the ingress speaks: request and response bodies as pydantic models.

Requests are strict: an unknown field (`"max_tokenz": 5`), a wrong type (`"max_tokens": "5"`) or a
value out of range is a 400 whose body names the field, as OpenAI answers; every number has a range
here, so nothing out of range reaches a replica. What the engine cannot do (n > 1, penalties,
logit_bias, tools) is refused the same way rather than silently ignored. Beyond OpenAI, a request may
set `top_k`, `ignore_eos`, `stop_token_ids` and `return_tokens_as_token_ids` (vLLM's extensions).
Stop lists may be as long as the body allows (vLLM sets no count either).

Also vLLM's `/tokenize`, `/detokenize` and `/tokenizer_info` bodies, and the model cards of
`/v1/models` (one per servable depth, `MODEL@d<N>`).
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

from ...replicas.sampling import SEED_MAX, SEED_MIN, TOKEN_ID_MAX, TOP_K_MAX

MAX_LOGPROBS_COMPLETIONS = 20
MAX_TOP_LOGPROBS_CHAT = 20

Number = StrictInt | StrictFloat
TokenId = Annotated[StrictInt, Field(ge=0, le=TOKEN_ID_MAX)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class _Sampling(_Strict):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: StrictStr
    temperature: Number = Field(1.0, ge=0, le=2)
    top_p: Number = Field(1.0, gt=0, le=1)
    n: StrictInt = Field(1, description="only 1 is supported")
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    user: StrictStr | None = None
    presence_penalty: Number = Field(0.0, description="not supported: only 0")
    frequency_penalty: Number = Field(0.0, description="not supported: only 0")
    logit_bias: dict[str, Number] | None = Field(None, description="not supported: only {}")
    # vLLM's extensions
    top_k: StrictInt = Field(0, ge=-1, le=TOP_K_MAX, description="keep the k most likely tokens (0 or -1: off)")
    ignore_eos: StrictBool = False
    stop_token_ids: list[TokenId] | None = None
    return_tokens_as_token_ids: StrictBool = Field(
        False, description="name tokens in log-probabilities as 'token_id:<id>' instead of their text (vLLM's)")

    @model_validator(mode="after")
    def _check_common(self):
        if self.n != 1:
            raise ValueError(f"n: only n=1 is supported, got {self.n}")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0:
                raise ValueError(f"{name}: not supported by this server (only 0)")
        if self.logit_bias:
            raise ValueError("logit_bias: not supported by this server")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if any(not s for s in stops):
            raise ValueError("stop: stop sequences must be non-empty strings")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        return self

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage_in_stream(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


Prompt = StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]  # ids: the replica checks them


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: Prompt
    max_tokens: StrictInt | None = Field(16, ge=0, description="0 only with echo (score the prompt)")
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS_COMPLETIONS)
    echo: StrictBool = False
    best_of: StrictInt | None = Field(None, description="only 1 is supported")
    suffix: StrictStr | None = Field(None, description="not supported")

    @model_validator(mode="after")
    def _check_prompt(self):
        if self.best_of not in (None, 1):
            raise ValueError(f"best_of: only 1 is supported, got {self.best_of}")
        if self.suffix:
            raise ValueError("suffix: not supported by this server")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt: must not be an empty list")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens: 0 is only allowed with echo (scoring the prompt)")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompts of the request, one per choice: strings or token id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class TextPart(_Strict):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ResponseFormat(_Strict):
    type: Literal["text"]


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS_CHAT)
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _check_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: only allowed when logprobs is true")
        if self.max_tokens is not None and self.max_completion_tokens is not None \
                and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_completion_tokens: differs from max_tokens; give one of them")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# --------------------------------------------------------------------------------------------------
# responses
# --------------------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class CompletionLogprobs(BaseModel):
    """The legacy completions shape: parallel lists, one entry per token."""

    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    """A servable model: the policy's name (routed by the policy) or `NAME@d<N>` (pinned to depth N),
    with the limits the ingress enforces: prompt + completion <= max_model_len, prompt <=
    max_prompt_tokens, completion <= max_tokens."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "dsla-serve"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    max_prompt_tokens: int | None = None
    max_tokens: int | None = None
    depth: int | None = Field(None, description="the conversion depth it is served at (None: the policy chooses)")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --------------------------------------------------------------------------------------------------
# vLLM's tokenizer endpoints
# --------------------------------------------------------------------------------------------------
class TokenizeCompletionRequest(_Strict):
    """POST /tokenize with a text prompt."""

    model: StrictStr | None = None
    prompt: StrictStr
    add_special_tokens: StrictBool = True
    return_token_strs: StrictBool = False


class TokenizeChatRequest(_Strict):
    """POST /tokenize with a conversation (rendered with the chat template first)."""

    model: StrictStr | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: StrictBool = True
    add_special_tokens: StrictBool = False
    return_token_strs: StrictBool = False


TokenizeRequest = TokenizeCompletionRequest | TokenizeChatRequest


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int | None
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(_Strict):
    """POST /detokenize."""

    model: StrictStr | None = None
    tokens: list[TokenId]


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    """GET /tokenizer_info: what a client needs to tokenize as the server does (vLLM's fields)."""

    model_config = ConfigDict(extra="allow")

    tokenizer_class: str
    eos_token: str | None = None
    bos_token: str | None = None
    pad_token: str | None = None
    unk_token: str | None = None
    chat_template: str | None = None
    model_max_length: int | None = None
    added_tokens_decoder: dict[str, Any] = {}
