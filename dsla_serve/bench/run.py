"""A run: requests sent at their arrival times against an endpoint, each streamed and timed.

    config = BenchConfig(url="http://127.0.0.1:8000", model="tiny-llama", ...)
    corpus = load_corpus(config, ["book.txt"])
    summary, results = asyncio.run(run_once(config, corpus, poisson(4, 200), label="adaptive", rate=4, slo=slo))

A run is bounded in count (the arrivals given) and in time (no request is sent after `duration_s`,
none waits longer than `timeout_s`); requests are sent on schedule whatever the server does (an open
loop: a slow server faces the same offered load), and how late the client itself sent them is
recorded (`client_lag_p95_ms`), so an overloaded client shows.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import httpx

from ..policies import SLO
from .arrivals import Arrival
from .client import Result, send
from .report import Summary, summarize
from .workload import Corpus, Lengths, plan_requests


@dataclass(frozen=True)
class BenchConfig:
    """What to send, and where.

    url: the server's base URL (the part before /v1). model: the `model` of every request.
    prompt_tokens / output_tokens: length distributions (a trace's own lengths take precedence).
    ignore_eos: ask for exactly the output length (vLLM's extension; off for servers that refuse it).
    duration_s: no request is sent later than this after the start; timeout_s: per request.
    """

    url: str
    model: str
    prompt_tokens: Lengths
    output_tokens: Lengths
    api_key: str | None = None
    ignore_eos: bool = True
    temperature: float = 0.0
    duration_s: float = 600.0
    timeout_s: float = 120.0
    seed: int = 0

    def client(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.AsyncClient(base_url=self.url.rstrip("/"), headers=headers,
                                 limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

    def body(self, prompt: list[int] | str, max_tokens: int, seed: int) -> dict:
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": self.temperature,
                "seed": seed, "stream": True, "stream_options": {"include_usage": True}}
        if self.ignore_eos:
            body["ignore_eos"] = True
        return body


def tokenize_with(url: str, model: str, api_key: str | None):
    """A tokenizer through the endpoint's /tokenize (vLLM's and DSLA-Serve's), or None when it has none."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=120)

    def tokenize(text: str) -> list[int]:
        r = client.post("/tokenize", json={"model": model, "prompt": text, "add_special_tokens": False})
        r.raise_for_status()
        return list(r.json()["tokens"])

    try:
        tokenize("hello")
    except (httpx.HTTPError, KeyError, ValueError):
        client.close()
        return None
    return tokenize


def load_corpus(config: BenchConfig, paths: list[str]) -> Corpus:
    return Corpus.from_files(paths, tokenize_with(config.url, config.model, config.api_key))


async def run_once(config: BenchConfig, corpus: Corpus, arrivals: list[Arrival], *, label: str,
                   rate: float | None, slo: SLO | None, progress: bool = True) -> tuple[Summary, list[Result]]:
    """Send every arrival on schedule (within `duration_s`) and summarise what came back."""
    from tqdm.auto import tqdm

    planned = plan_requests(arrivals, corpus, config.prompt_tokens, config.output_tokens, config.seed,
                            config.duration_s)
    results: list[Result] = []
    bar = tqdm(total=len(planned), desc=f"{label} @ {rate:g}/s" if rate else label, unit="req", disable=not progress,
               leave=False)
    async with config.client() as http:
        tasks = []
        start = time.monotonic()
        for i, request in enumerate(planned):
            delay = start + request.arrival.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            late = max(0.0, time.monotonic() - start - request.arrival.at)
            body = config.body(request.prompt, request.max_tokens, config.seed + i)
            task = asyncio.create_task(send(http, "/v1/completions", body, config.timeout_s, late))
            task.add_done_callback(lambda t: (results.append(t.result()), bar.update(1)))
            tasks.append(task)
        await asyncio.gather(*tasks)
    bar.close()
    return summarize(label, rate, results, slo), results


async def warm_up(config: BenchConfig, corpus: Corpus, count: int) -> None:
    """`count` requests one after another, not measured (first-request costs out of the way)."""
    rng = random.Random(config.seed + 1)
    async with config.client() as http:
        for i in range(count):
            await send(http, "/v1/completions", config.body(corpus.prompt(config.prompt_tokens.draw(rng), rng),
                                                           config.output_tokens.draw(rng), i), config.timeout_s)
