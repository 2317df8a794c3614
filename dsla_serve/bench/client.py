"""One streamed completion request, timed as the client sees it (its `Result`: result.py).

    result = await send(http, "/v1/completions", body, timeout_s=120)
    result.ttft_s, result.tpot_s, result.e2e_s, result.output_tokens, result.error, result.depth

TTFT is the time to the first chunk that carries text; TPOT the time from it to the last such chunk
over the tokens after the first (the usage chunk's completion_tokens when the server sends one,
else one token per chunk). An error is named by kind: `http_<status>:<code>` from an OpenAI-style
error body, `stream:<code>` for an error event inside a stream, `timeout`, `connect`, `protocol`.
The depth comes from `system_fingerprint` (`dsla-depth-<d>`, DSLA-Serve's), None elsewhere.
"""

from __future__ import annotations

import json
import time

import httpx

from .result import Result


def _depth(fingerprint: str | None) -> int | None:
    if fingerprint and fingerprint.startswith("dsla-depth-"):
        try:
            return int(fingerprint[len("dsla-depth-"):].split("+")[0])
        except ValueError:
            return None
    return None


def _error_kind(status: int, body: bytes) -> str:
    try:
        code = json.loads(body)["error"].get("code")
    except Exception:  # noqa: BLE001 - not an OpenAI-style body
        code = None
    return f"http_{status}" + (f":{code}" if code else "")


async def send(http: httpx.AsyncClient, path: str, body: dict, timeout_s: float, late_s: float = 0.0) -> Result:
    """POST `body` (with "stream": true) and read its server-sent events to the end."""
    start = time.monotonic()
    first = last = None
    chunks = 0
    usage, depth, error = None, None, None
    try:
        async with http.stream("POST", path, json=body, timeout=timeout_s) as response:
            if response.status_code != 200:
                return Result(start, time.monotonic() - start, error=_error_kind(response.status_code,
                                                                                  await response.aread()),
                              late_s=late_s)
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    error = f"stream:{event['error'].get('code') or 'error'}"
                    continue
                depth = _depth(event.get("system_fingerprint")) if depth is None else depth
                usage = event.get("usage") or usage
                choices = event.get("choices") or []
                if choices and (choices[0].get("text") or (choices[0].get("delta") or {}).get("content")):
                    now = time.monotonic()
                    first = now if first is None else first
                    last = now
                    chunks += 1
    except httpx.TimeoutException:
        error = "timeout"
    except httpx.ConnectError:
        error = "connect"
    except (httpx.HTTPError, json.JSONDecodeError, KeyError, TypeError):
        error = "protocol"
    end = time.monotonic()
    tokens = usage.get("completion_tokens", chunks) if usage else chunks
    tpot = (last - first) / (tokens - 1) if first is not None and last is not None and tokens > 1 else None
    return Result(start, end - start, ttft_s=None if first is None else first - start, tpot_s=tpot,
                  prompt_tokens=usage.get("prompt_tokens") if usage else None, output_tokens=tokens, depth=depth,
                  error=error, late_s=late_s)
