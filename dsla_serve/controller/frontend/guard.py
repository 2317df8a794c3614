"""The ingress's body-size cap (a plain ASGI middleware).

- A body over `http.max_body_bytes` is answered 413 before it is read: at once from its
  Content-Length, or, for a chunked body, as soon as the bytes read pass the cap (the guard reads such
  a body itself, then hands it on). Nothing else waits on it: the body is never parsed or tokenized.
The cap is read from the running ingress (`app.state.core.max_body_bytes`); before the ingress is set
up, DEFAULT_MAX_BODY_BYTES applies.
"""

from __future__ import annotations

from .errors import APIError

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


def too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than this server's limit of {limit} bytes "
                    "(http.max_body_bytes)", code="request_too_large")


class BodyLimit:
    """ASGI middleware: the body cap (see the module docstring)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        core = getattr(getattr(scope.get("app"), "state", None), "core", None)
        limit = getattr(core, "max_body_bytes", DEFAULT_MAX_BODY_BYTES)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit():  # the server holds the body to its declared length
            if int(length) > limit:
                await too_large(limit).response()(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        body, read, more = [], 0, True
        while more:  # a chunked body: read up to the cap, then hand it on
            message = await receive()
            if message["type"] != "http.request":
                break
            body.append(message.get("body", b""))
            read += len(body[-1])
            more = message.get("more_body", False)
            if read > limit:
                await too_large(limit).response()(scope, receive, send)
                return
        replay = [{"type": "http.request", "body": b"".join(body), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)
