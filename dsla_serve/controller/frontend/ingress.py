"""The OpenAI-compatible HTTP ingress (FastAPI through `@serve.ingress`).

    GET  /health                 liveness (no API key needed)
    GET  /metrics                Prometheus metrics (no API key needed; metrics.py)
    GET  /v1/models              the served model, and the model at each servable depth (`NAME@d<N>`)
    POST /v1/completions         text completion: echo, logprobs, streaming (SSE), several prompts
    POST /v1/chat/completions    chat through the tokenizer's chat template: logprobs, streaming
    POST /tokenize, /detokenize  vLLM's tokenizer endpoints; GET /tokenizer_info
    GET  /v1/dsla/status         pools, depths, routing, SLO attainment, quality, trainer, decisions

The ingress tokenizes (the chat template for chat, off the event loop); the replica checks the ids
against its model's vocabulary and sends text back, once, with every token a logprobs response names.
Each prompt goes to a pool drawn by the routing weights the policy actor publishes, spilling over to
another pool within the quality floor when that one is full (routing.py); a request naming
`NAME@d<N>` runs only on a pool whose replicas serve depth N. The response headers `X-DSLA-Pool` and
`X-DSLA-Depth`, and `system_fingerprint` (`dsla-depth-<d>`), say which pool and depth served it; every
response carries Ray Serve's `X-Request-Id`, which errors name (errors.py); guard.py caps the body size. With
`trainer.serve_prompts_sample`, accepted prompts are offered to the served-prompt sample
(prompt_sample.py). Errors are OpenAI-style bodies without internals (errors.py); 429/503 carry Retry-After.

(No `from __future__ import annotations` here: FastAPI must see the real `Request` annotation of the
class-based routes that Serve builds.)
"""

import asyncio
import dataclasses
import logging
import json
import re
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from ...policies import Policy
from ...replicas.messages import StreamDelta
from ..messages import IngressStatus
from .errors import APIError, install_error_handlers, internal_error, parse_body, request_id_of
from .formatting import SSE_DONE, ChatStream, CompletionStream, chat_response, completion_response, sse
from .guard import BodyLimit
from .ingress_state import IngressState
from .metrics import CONTENT_TYPE
from .openapi import install_openapi
from .prompt_sample import chat_prompt_text
from .prompting import encode_chat, encode_prompt, resolve_max_tokens, sampling_params
from .protocol import (ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse,
                       DetokenizeRequest, DetokenizeResponse, ErrorResponse, ModelCard, ModelList,
                       TokenizeChatRequest, TokenizeCompletionRequest, TokenizeResponse, TokenizerInfo, now)
from .runs import Batch, Prompt, Run, start_runs

log = logging.getLogger("ray.serve")

app = FastAPI(title="DSLA-Serve", version="1", description="OpenAI-compatible serving of DSLA hybrid models under SLOs")
install_error_handlers(app)

OPEN_PATHS = {"/health", "/metrics", "/", "/docs", "/openapi.json"}
_PINNED = re.compile(r"^(?P<name>.+)@d(?P<depth>\d{1,6})$")
_ERRORS = {status: {"model": ErrorResponse, "description": words} for status, words in (
    (400, "invalid request (the body names the field in `param`), an unknown model or depth"),
    (401, "missing or wrong API key"),
    (413, "body over http.max_body_bytes"),
    (429, "queue full: retry after Retry-After seconds"), (503, "no pool ready or a pool failing: retry later"),
    (500, "internal error (see the request id)"))}


@app.middleware("http")
async def _require_api_key(request: Request, call_next):
    core: IngressState | None = getattr(request.app.state, "core", None)
    if core is not None and request.url.path not in OPEN_PATHS \
            and not core.authorized(request.headers.get("authorization")):
        return APIError(401, "missing or wrong API key: send `Authorization: Bearer <key>`", code="invalid_api_key",
                        headers={"WWW-Authenticate": "Bearer"}).response()
    return await call_next(request)


app.add_middleware(BodyLimit)  # outermost: the body cap before anything reads a body
# before `@serve.ingress(app)` below, which serves a copy of the app as it is then
install_openapi(app, {("/v1/completions", "post"): CompletionRequest,
                      ("/v1/chat/completions", "post"): ChatCompletionRequest,
                      ("/tokenize", "post"): (TokenizeCompletionRequest, TokenizeChatRequest),
                      ("/detokenize", "post"): DetokenizeRequest})


async def merge(runs: list[Run]) -> AsyncIterator[tuple[int, StreamDelta]]:
    """(index of the run, delta) from several runs as they come."""
    if len(runs) == 1:
        async for delta in runs[0]:
            yield 0, delta
        return
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def pump(i: int, run: Run) -> None:
        try:
            async for delta in run:
                await queue.put((i, delta))
            await queue.put((i, end))
        except Exception as e:  # noqa: BLE001 - handed to the consumer
            await queue.put((i, e))

    tasks = [asyncio.create_task(pump(i, run)) for i, run in enumerate(runs)]
    try:
        left = len(runs)
        while left:
            i, item = await queue.get()
            if item is end:
                left -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()


def _served_headers(runs: list[Run]) -> dict[str, str]:
    depths = sorted({r.choice.depth for r in runs if r.choice.depth is not None})
    return {"X-DSLA-Pool": ",".join(sorted({r.pool for r in runs})),
            "X-DSLA-Depth": ",".join(str(d) for d in depths)}


async def collect_all(runs: list[Run]) -> None:
    """Run every request to its end; if one fails (or the client goes away), cancel the others."""
    tasks = [asyncio.ensure_future(run.collect()) for run in runs]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def _raise_choice_error(runs: list[Run], request_id: str) -> None:
    for run in runs:
        if run.choice.finish_reason == "error":
            log.error("request %s: generation failed on pool %s: %s", request_id, run.pool, run.choice.error)
            raise internal_error(request_id, "generation failed in the engine", code="engine_error")


def _stream_error(e: Exception, request_id: str, what: str) -> str:
    """The error event of a stream that broke after its status line was sent."""
    if isinstance(e, APIError):
        return sse(e.body())
    log.error("request %s: %s stream failed", request_id, what, exc_info=e)
    return sse(internal_error(request_id, "the stream failed").body())


@serve.ingress(app)
class Ingress:
    """Serve deployment class of the HTTP ingress."""

    async def __init__(self, policy: dict, policy_actor, pools: dict, seed: int = 0):
        self.policy = Policy.model_validate(policy)
        self.core = IngressState(self.policy, policy_actor, pools, seed=seed)
        await self.core.start()
        app.state.core = self.core

    # ------------------------------------------------------------------------------------------
    def _model(self, model: str | None) -> tuple[str, int | None]:
        """(the name to answer with, the depth it pins or None) for a request's `model`."""
        if model is None:
            return self.policy.http.model_name, None
        pinned = _PINNED.match(model)
        base, depth = (pinned["name"], int(pinned["depth"])) if pinned else (model, None)
        if base not in self.core.model_names:
            raise APIError(400, f"the model {model!r} does not exist here; this server serves "
                           f"{self.policy.http.model_name!r}, and `{self.policy.http.model_name}@d<N>` at each depth "
                           "of /v1/models", param="model", code="model_not_found")
        name = self.policy.http.model_name
        return (name if depth is None else f"{name}@d{depth}"), depth

    def _card(self, depth: int | None) -> ModelCard:
        limits, name = self.core.limits, self.policy.http.model_name
        usable = limits.max_prompt_tokens + limits.max_tokens_limit
        return ModelCard(id=name if depth is None else f"{name}@d{depth}", created=now(), root=name,
                         parent=None if depth is None else name, depth=depth,
                         max_model_len=usable if limits.max_model_len is None else min(usable, limits.max_model_len),
                         max_prompt_tokens=limits.max_prompt_tokens, max_tokens=limits.max_tokens_limit)

    async def _encode(self, fn, *args):
        """Tokenize off the event loop: a long prompt must not stall the other requests."""
        return await asyncio.to_thread(fn, self.core.tokenizer, *args)

    # ------------------------------------------------------------------------------------------
    @app.get("/health")
    async def health(self):
        return {"status": "ok", "routable": self.core.table.routable, "routing_error": self.core.routing_error}

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}},
                                                                   "description": "Prometheus text format"}})
    async def metrics(self):
        try:
            status = await asyncio.wait_for(self.core.policy_actor.status.remote(), timeout=2.0)
        except Exception:  # noqa: BLE001 - the request metrics are still worth a scrape
            status = None
        table = self.core.table
        return Response(self.core.metrics.render(status, table.in_flight, table.waiting()), media_type=CONTENT_TYPE)

    @app.get("/v1/models", response_model=ModelList)
    async def models(self):
        cards = [self._card(None)] + [self._card(d) for d in self.core.table.servable_depths()]
        return ModelList(data=cards).model_dump()

    @app.get("/v1/dsla/status")
    async def status(self):
        status = await self.core.policy_actor.status.remote()
        table, sample = self.core.table, self.core.prompt_sample
        ingress = IngressStatus(in_flight=dict(table.in_flight), waiting=table.waiting(), queue_cap=table.queue_cap,
                                routing_version=table.version, routing_error=self.core.routing_error,
                                served_prompt_sample=sample.status() if sample is not None else None)  # counts only
        return dataclasses.asdict(dataclasses.replace(status, ingress=ingress))

    @app.post("/v1/completions", responses={200: {"model": CompletionResponse, "description": "the completion; "
                                                  "with stream, server-sent events of its chunks"}, **_ERRORS})
    async def completions(self, request: Request):
        request_id = request_id_of(request.scope)
        body: CompletionRequest = await parse_body(request, CompletionRequest)
        model, depth = self._model(body.model)
        prompts = body.prompts()
        params = [f"prompt.{i}" if len(prompts) > 1 else "prompt" for i in range(len(prompts))]
        ids = await self._encode(lambda tok: [encode_prompt(tok, p) for p in prompts])
        sampling = [sampling_params(body, resolve_max_tokens(len(x), body.max_tokens, self.core.limits)) for x in ids]
        want_text = body.echo or self.core.prompt_sample is not None
        runs = await start_runs(self.core, Batch(request_id, "completions", [
            Prompt(x, s, param, want_text and not isinstance(p, str))
            for x, s, param, p in zip(ids, sampling, params, prompts)], depth))
        # a prompt given as token ids comes back as text from the replica (on its first delta)
        texts = [p if isinstance(p, str) else run.choice.prompt_text or "" for p, run in zip(prompts, runs)]
        self.core.served_prompts(texts)
        if not body.echo:
            texts = [""] * len(prompts)
        response_id, created = f"cmpl-{request_id}", now()
        as_ids = body.return_tokens_as_token_ids
        if not body.stream:
            await collect_all(runs)
            _raise_choice_error(runs, request_id)
            response = completion_response(response_id, created, model, [r.choice for r in runs], echo=body.echo,
                                           logprobs=body.logprobs, prompt_texts=texts, token_ids=as_ids)
            return JSONResponse(response.model_dump(), headers=_served_headers(runs))

        fmt = CompletionStream(response_id, created, model, echo=body.echo, logprobs=body.logprobs, token_ids=as_ids)

        async def events():
            try:
                async for i, delta in merge(runs):
                    yield fmt.chunk(runs[i].choice, delta, texts[i])
                _raise_choice_error(runs, request_id)
                if body.include_usage_in_stream:
                    yield fmt.usage([r.choice for r in runs])
            except Exception as e:  # noqa: BLE001 - the status line is sent: report in the stream
                yield _stream_error(e, request_id, "completion")
            yield SSE_DONE

        return StreamingResponse(events(), media_type="text/event-stream", headers=_served_headers(runs))

    @app.post("/v1/chat/completions", responses={200: {"model": ChatCompletionResponse, "description": "the chat "
                                                       "completion; with stream, server-sent events of its chunks"},
                                                  **_ERRORS})
    async def chat_completions(self, request: Request):
        request_id = request_id_of(request.scope)
        body: ChatCompletionRequest = await parse_body(request, ChatCompletionRequest)
        model, depth = self._model(body.model)
        ids = await self._encode(encode_chat, body)
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        sampling = sampling_params(body, resolve_max_tokens(len(ids), body.requested_max_tokens, self.core.limits,
                                                            param=param))
        runs = await start_runs(self.core, Batch(request_id, "chat", [Prompt(ids, sampling, "messages")], depth))
        if self.core.prompt_sample is not None:
            self.core.served_prompts([chat_prompt_text(body)])
        run = runs[0]
        response_id, created, top = f"chatcmpl-{request_id}", now(), body.top_logprobs or 0
        as_ids = body.return_tokens_as_token_ids
        if not body.stream:
            await collect_all(runs)
            _raise_choice_error(runs, request_id)
            response = chat_response(response_id, created, model, run.choice, logprobs=body.logprobs,
                                     top_logprobs=top, token_ids=as_ids)
            return JSONResponse(response.model_dump(), headers=_served_headers(runs))

        fmt = ChatStream(response_id, created, model, logprobs=body.logprobs, top_logprobs=top, token_ids=as_ids,
                         choice=run.choice)

        async def events():
            try:
                yield fmt.role()
                async for _, delta in merge(runs):
                    yield fmt.chunk(run.choice, delta)
                _raise_choice_error(runs, request_id)
                if body.include_usage_in_stream:
                    yield fmt.usage([run.choice])
            except Exception as e:  # noqa: BLE001
                yield _stream_error(e, request_id, "chat")
            yield SSE_DONE

        return StreamingResponse(events(), media_type="text/event-stream", headers=_served_headers(runs))

    # ------------------------------------------------------------------------------------------
    # vLLM's tokenizer endpoints (lm-evaluation-harness's remote tokenizer uses them)
    # ------------------------------------------------------------------------------------------
    @app.post("/tokenize", response_model=TokenizeResponse, responses=_ERRORS)
    async def tokenize(self, request: Request):
        try:  # vLLM's two bodies: a conversation when it has `messages`
            chat = "messages" in json.loads(await request.body())
        except (ValueError, TypeError):
            chat = False  # parse_body says what is wrong
        body = await parse_body(request, TokenizeChatRequest if chat else TokenizeCompletionRequest)
        self._model(body.model)
        if isinstance(body, TokenizeChatRequest):
            chat = ChatCompletionRequest(model=self.policy.http.model_name, messages=body.messages)
            ids = await self._encode(encode_chat, chat, body.add_generation_prompt)
        else:
            ids = await self._encode(lambda tok: list(tok(body.prompt, add_special_tokens=body.add_special_tokens)
                                                      ["input_ids"]))
        strs = self.core.tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=self._card(None).max_model_len, tokens=ids,
                                token_strs=strs).model_dump()

    @app.post("/detokenize", response_model=DetokenizeResponse, responses=_ERRORS)
    async def detokenize(self, request: Request):
        body: DetokenizeRequest = await parse_body(request, DetokenizeRequest)
        self._model(body.model)
        table = self.core.table
        pool = table.pick() or next(iter(table.within_floor()), None)
        if pool is None:
            raise APIError(503, "no pool is ready to detokenize; retry shortly", code="no_pool_ready",
                           headers=self.core.retry_after())
        try:  # the replica decodes (one tokenization boundary) and checks the ids against its vocabulary
            text = await self.core.pools[pool].detokenize.remote(body.tokens)
        except ValueError as e:
            raise APIError(400, f"tokens: {str(getattr(e, 'cause', e)).splitlines()[0]}", param="tokens",
                           code="invalid_value") from None
        return DetokenizeResponse(prompt=text).model_dump()

    @app.get("/tokenizer_info", response_model=TokenizerInfo)
    async def tokenizer_info(self):
        tok = self.core.tokenizer
        template = tok.chat_template if isinstance(tok.chat_template, str) else None
        added = {str(i): {"content": t.content, "special": t.special} for i, t in tok.added_tokens_decoder.items()}
        return TokenizerInfo(tokenizer_class=type(tok).__name__, eos_token=tok.eos_token, bos_token=tok.bos_token,
                             pad_token=tok.pad_token, unk_token=tok.unk_token, chat_template=template,
                             model_max_length=self._card(None).max_model_len, added_tokens_decoder=added).model_dump()

    def __del__(self):
        core = getattr(self, "core", None)
        if core is not None:
            core.stop()

