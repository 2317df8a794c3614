"""The OpenAI-compatible HTTP ingress (FastAPI through `@serve.ingress`).

    GET  /health                 liveness (no API key needed)
    GET  /v1/models              the served model
    POST /v1/completions         text completion: echo, logprobs, streaming (SSE), several prompts
    POST /v1/chat/completions    chat through the tokenizer's chat template: logprobs, streaming
    GET  /v1/dsla/status         pools, depths, routing, SLO attainment, quality, trainer, decisions

The ingress tokenizes (the chat template for chat); the replica checks the ids against its model's
vocabulary and sends text back, once, with every token text a logprobs response needs.
Each request goes to one pool, drawn by the routing weights the policy actor publishes. The response
headers `X-DSLA-Pool` and `X-DSLA-Depth` (and `system_fingerprint`, `dsla-depth-<d>`) say which pool
and depth served it. With `trainer.serve_prompts_sample`, accepted prompts are offered to the bounded
served-prompt sample (prompt_sample.py). Errors are OpenAI-style bodies (errors.py); 429/503 carry Retry-After.

(No `from __future__ import annotations` here: FastAPI must see the real `Request` annotation of the
class-based routes that Serve builds.)
"""

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from ...policies import Policy
from ...replicas.messages import StreamDelta
from ...replicas.sampling import SamplingParams
from ..messages import IngressStatus
from .errors import APIError, install_error_handlers, parse_body
from .formatting import SSE_DONE, ChatStream, CompletionStream, chat_response, completion_response, sse
from .ingress_state import IngressState
from .prompt_sample import chat_prompt_text
from .prompting import encode_chat, encode_prompt, resolve_max_tokens, sampling_params
from .protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList, new_id, now
from .runs import Run, start_run

log = logging.getLogger("ray.serve")

app = FastAPI(title="DSLA-Serve", description="OpenAI-compatible serving of DSLA hybrid models under SLOs")
install_error_handlers(app)

OPEN_PATHS = {"/health", "/", "/docs", "/openapi.json"}


@app.middleware("http")
async def _require_api_key(request: Request, call_next):
    core: IngressState | None = getattr(request.app.state, "core", None)
    if core is not None and request.url.path not in OPEN_PATHS \
            and not core.authorized(request.headers.get("authorization")):
        return APIError(401, "missing or wrong API key: send `Authorization: Bearer <key>`", code="invalid_api_key",
                        headers={"WWW-Authenticate": "Bearer"}).response()
    return await call_next(request)


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


def _raise_choice_error(runs: list[Run]) -> None:
    for run in runs:
        if run.choice.finish_reason == "error":
            raise APIError(500, f"generation failed: {run.choice.error or 'engine error'}", code="engine_error")


@serve.ingress(app)
class Ingress:
    """Serve deployment class of the HTTP ingress."""

    async def __init__(self, policy: dict, policy_actor, pools: dict, seed: int = 0):
        self.policy = Policy.model_validate(policy)
        try:
            from .metrics import IngressMetrics

            metrics = IngressMetrics()
        except Exception as e:  # noqa: BLE001 - outside a Serve replica
            log.warning("ingress metrics disabled: %s", e)
            metrics = None
        self.core = IngressState(self.policy, policy_actor, pools, seed=seed, metrics=metrics)
        await self.core.start()
        app.state.core = self.core

    # ------------------------------------------------------------------------------------------
    def _check_model(self, model: str) -> str:
        if model not in self.core.model_names:
            raise APIError(400, f"the model {model!r} does not exist here; this server serves "
                           f"{self.policy.http.model_name!r} (see /v1/models)", param="model", code="model_not_found")
        return self.policy.http.model_name

    async def _start_all(self, prompts: list[list[int]], sampling: list[SamplingParams], endpoint: str,
                         params: list[str], prompt_texts: list[bool]) -> list[Run]:
        arrived = time.monotonic()
        runs: list[Run] = []
        try:
            for i, (ids, p, param, text) in enumerate(zip(prompts, sampling, params, prompt_texts)):
                runs.append(await start_run(self.core, i, ids, p, endpoint, arrived, param=param,
                                            return_prompt_text=text))
        except BaseException:
            for run in runs:
                run.close(False)
            raise
        return runs

    # ------------------------------------------------------------------------------------------
    @app.get("/health")
    async def health(self):
        return {"status": "ok", "routable": self.core.table.routable, "routing_error": self.core.routing_error}

    @app.get("/v1/models")
    async def models(self):
        card = ModelCard(id=self.policy.http.model_name, created=now(), max_model_len=self.policy.model.max_model_len)
        return ModelList(data=[card]).model_dump()

    @app.get("/v1/dsla/status")
    async def status(self):
        status = await self.core.policy_actor.status.remote()
        table, sample = self.core.table, self.core.prompt_sample
        ingress = IngressStatus(in_flight=dict(table.in_flight), waiting=table.waiting(), queue_cap=table.queue_cap,
                                routing_version=table.version, routing_error=self.core.routing_error,
                                served_prompt_sample=sample.status() if sample is not None else None)  # counts only
        return dataclasses.asdict(dataclasses.replace(status, ingress=ingress))

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        body: CompletionRequest = await parse_body(request, CompletionRequest)
        model = self._check_model(body.model)
        prompts = body.prompts()
        params = [f"prompt.{i}" if len(prompts) > 1 else "prompt" for i in range(len(prompts))]
        ids = [encode_prompt(self.core.tokenizer, p) for p in prompts]
        sampling = [sampling_params(body, resolve_max_tokens(len(x), body.max_tokens, self.core.limits)) for x in ids]
        want_text = body.echo or self.core.prompt_sample is not None
        runs = await self._start_all(ids, sampling, "completions", params,
                                     [want_text and not isinstance(p, str) for p in prompts])
        # a prompt given as token ids comes back as text from the replica (on its first delta)
        texts = [p if isinstance(p, str) else run.choice.prompt_text or "" for p, run in zip(prompts, runs)]
        self.core.served_prompts(texts)
        if not body.echo:
            texts = [""] * len(prompts)
        request_id, created = new_id("cmpl"), now()
        if not body.stream:
            await collect_all(runs)
            _raise_choice_error(runs)
            response = completion_response(request_id, created, model, [r.choice for r in runs], echo=body.echo,
                                           logprobs=body.logprobs, prompt_texts=texts)
            return JSONResponse(response.model_dump(), headers=_served_headers(runs))

        fmt = CompletionStream(request_id, created, model, echo=body.echo, logprobs=body.logprobs)

        async def events():
            try:
                async for i, delta in merge(runs):
                    yield fmt.chunk(runs[i].choice, delta, texts[i])
                _raise_choice_error(runs)
                if body.include_usage_in_stream:
                    yield fmt.usage([r.choice for r in runs])
            except APIError as e:
                yield sse(e.body())
            except Exception as e:  # noqa: BLE001 - the status line is sent: report in the stream
                log.exception("completion stream failed")
                yield sse(APIError(500, f"stream failed: {type(e).__name__}: {e}").body())
            yield SSE_DONE

        return StreamingResponse(events(), media_type="text/event-stream", headers=_served_headers(runs))

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        body: ChatCompletionRequest = await parse_body(request, ChatCompletionRequest)
        model = self._check_model(body.model)
        ids = encode_chat(self.core.tokenizer, body)
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        sampling = sampling_params(body, resolve_max_tokens(len(ids), body.requested_max_tokens, self.core.limits,
                                                            param=param))
        runs = await self._start_all([ids], [sampling], "chat", ["messages"], [False])
        if self.core.prompt_sample is not None:
            self.core.served_prompts([chat_prompt_text(body)])
        run = runs[0]
        request_id, created, top = new_id("chatcmpl"), now(), body.top_logprobs or 0
        if not body.stream:
            await collect_all(runs)
            _raise_choice_error(runs)
            response = chat_response(request_id, created, model, run.choice, logprobs=body.logprobs, top_logprobs=top)
            return JSONResponse(response.model_dump(), headers=_served_headers(runs))

        fmt = ChatStream(request_id, created, model, logprobs=body.logprobs, top_logprobs=top)

        async def events():
            try:
                yield fmt.role()
                async for _, delta in merge(runs):
                    yield fmt.chunk(run.choice, delta)
                _raise_choice_error(runs)
                if body.include_usage_in_stream:
                    yield fmt.usage([run.choice])
            except APIError as e:
                yield sse(e.body())
            except Exception as e:  # noqa: BLE001
                log.exception("chat stream failed")
                yield sse(APIError(500, f"stream failed: {type(e).__name__}: {e}").body())
            yield SSE_DONE

        return StreamingResponse(events(), media_type="text/event-stream", headers=_served_headers(runs))

    def __del__(self):
        core = getattr(self, "core", None)
        if core is not None:
            core.stop()
