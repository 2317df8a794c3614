"""`dsla-serve bench` against a small OpenAI-compatible server of known behaviour (FastAPI in a thread):
arrivals, prompts of exact lengths through /tokenize, streaming timings, SLO attainment, goodput,
errors by kind, the mean served depth, the JSON and the PNG."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from dsla_serve.bench.arrivals import Arrival, gamma, poisson, read_trace, scaled, write_trace
from dsla_serve.bench.workload import Lengths
from dsla_serve.cli import main
from tests.ports import free_port

TOKEN_S = 0.01  # the fake server's time per token
SLOW_PROMPT = 50  # prompts this long or longer wait 0.3 s before their first token


def _fake_server() -> FastAPI:
    app = FastAPI()
    seen = {"n": 0}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "fake", "object": "model", "created": 0, "owned_by": "t"}]}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = await request.json()
        return {"tokens": [ord(c) % 256 for c in body["prompt"]], "count": len(body["prompt"]), "max_model_len": 9}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        seen["n"] += 1
        if seen["n"] % 10 == 0:  # every tenth: refused
            return JSONResponse({"error": {"message": "full", "type": "rate_limit_exceeded", "param": None,
                                           "code": "queue_full"}}, status_code=429)
        prompt, n = body["prompt"], body["max_tokens"]
        assert isinstance(prompt, list) and body["stream"] and body["ignore_eos"]

        async def events():
            await asyncio.sleep(0.3 if len(prompt) >= SLOW_PROMPT else 0.02)
            for i in range(n):
                chunk = {"id": "x", "object": "text_completion", "created": 0, "model": "fake",
                         "system_fingerprint": f"dsla-depth-{len(prompt) % 2}",
                         "choices": [{"index": 0, "text": "a", "logprobs": None, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(TOKEN_S)
            usage = {"prompt_tokens": len(prompt), "completion_tokens": n, "total_tokens": len(prompt) + n}
            yield f"data: {json.dumps({'id': 'x', 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def server():
    port = free_port()
    config = uvicorn.Config(_fake_server(), host="127.0.0.1", port=port, log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    while not running.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    thread.join(10)


def test_arrivals_have_the_rate_and_the_burstiness_asked_for(tmp_path):
    for cv in (1.0, 3.0):
        arrivals = gamma(rate=5.0, cv=cv, count=4000, seed=1)
        gaps = [b.at - a.at for a, b in zip(arrivals, arrivals[1:])]
        assert statistics.mean(gaps) == pytest.approx(0.2, rel=0.1)
        assert statistics.pstdev(gaps) / statistics.mean(gaps) == pytest.approx(cv, rel=0.15)
    assert poisson(5.0, 10, seed=2) == gamma(5.0, 1.0, 10, seed=2)
    path = tmp_path / "trace.jsonl"
    write_trace(path, [Arrival(3.0, 10, 2), Arrival(1.0, 20, 4), Arrival(2.0, 5, 1)])
    trace = read_trace(path)
    assert [(a.at, a.prompt_tokens) for a in trace] == [(0.0, 20), (1.0, 5), (2.0, 10)]
    assert [a.at for a in scaled(trace, 4.0)] == [0.0, 0.25, 0.5]  # 2 gaps in 0.5 s: 4/s
    lengths = Lengths.parse("lognormal:64:0.5", cap=100)
    import random
    draws = [lengths.draw(random.Random(i)) for i in range(500)]
    assert max(draws) == 100 and 50 < statistics.median(draws) < 80 and Lengths.parse("7").draw(random.Random()) == 7


def test_bench_reports_percentiles_attainment_goodput_errors_and_depth(server, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat " * 200)
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", "--url", server, "--corpus", str(corpus), "--rates", "10,20", "--num-requests", "30",
                 "--prompt-tokens", "uniform:10:90", "--output-tokens", "fixed:5", "--ttft-ms", "200",
                 "--tpot-ms", "100", "--warmup", "0", "--label", "fake", "--output", str(out), "--plot", str(png),
                 "--no-progress"])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["model"] == "fake" and record["prompts_as"] == "token ids" and len(record["runs"]) == 2
    for run in record["runs"]:
        assert run["sent"] == 30 and run["errors"] == {"http_429:queue_full": 3} and run["ok"] == 27
        # prompts of 50+ tokens (half of uniform:10:90) miss the 200 ms TTFT target; the others meet all
        slow = run["missed"].get("ttft_p95_ms", 0)
        assert 5 <= slow <= 22 and run["attainment"] == pytest.approx((27 - slow) / 30, abs=1e-3)
        assert run["goodput"] == pytest.approx((27 - slow) / run["duration_s"], rel=1e-3)
        assert run["tpot_ms"]["p50"] == pytest.approx(TOKEN_S * 1e3, abs=8)
        assert 300 <= run["ttft_ms"]["p95"] < 600 and run["e2e_ms"]["p50"] > run["ttft_ms"]["p50"]
        assert 0.3 < run["mean_depth"] < 0.7 and set(run["depths"]) == {"0", "1"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http_429:queue_full 3" in capsys.readouterr().out


def test_phases_are_poisson_segments_back_to_back():
    from dsla_serve.bench.arrivals import phases

    arrivals = phases([(1.0, 10), (50.0, 2), (1.0, 10)], seed=3)
    times = [a.at for a in arrivals]
    assert times == sorted(times) and times[-1] < 22
    busy = sum(10 <= t < 12 for t in times)
    assert busy > 60 and busy > 3 * sum(t < 10 for t in times)  # 100 expected in the burst, 10 before it
    assert phases([(1.0, 10), (50.0, 2), (1.0, 10)], seed=3) == arrivals


def test_planned_requests_are_the_same_for_the_same_seed():
    from dsla_serve.bench.workload import Corpus, plan_requests

    corpus = Corpus(list(range(1000)), "")
    arrivals = [Arrival(0.0), Arrival(1.0, 7, 3), Arrival(5.0)]
    plan = plan_requests(arrivals, corpus, Lengths.parse("uniform:10:20"), Lengths.parse(4), seed=1, duration_s=2)
    assert [p.arrival.at for p in plan] == [0.0, 1.0]
    assert 10 <= len(plan[0].prompt) <= 20 and plan[0].max_tokens == 4
    assert len(plan[1].prompt) == 7 and plan[1].max_tokens == 3
    assert plan == plan_requests(arrivals, corpus, Lengths.parse("uniform:10:20"), Lengths.parse(4), seed=1,
                                 duration_s=2)
