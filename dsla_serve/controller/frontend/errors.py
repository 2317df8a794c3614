"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` for every failure.

    raise APIError(400, "max_tokens 5000 is above the limit 256 (http.max_tokens_limit)",
                   param="max_tokens", code="max_tokens_too_large")

`install_error_handlers(app)` makes FastAPI answer malformed JSON, validation errors, unknown routes
and unexpected exceptions in that shape too, so a client always gets a body it can parse. No response
carries a traceback, a path or an address: an unexpected error is logged with the request's id and
answered with `internal_error(request_id)`, which names only that id.

Request ids are Ray Serve's: its proxy takes the client's `X-Request-Id` or makes one, passes it to
the ingress in that header, answers with it, and tags the replica's log lines with it
(`request_id_of`); completion ids are `cmpl-<request id>`.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .protocol import ErrorDetail, ErrorResponse

log = logging.getLogger("ray.serve")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_exceeded", 500: "server_error", 503: "service_unavailable"}


class APIError(Exception):
    """An error answered with `status` and an OpenAI-style body; `headers` e.g. Retry-After."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return ErrorResponse(error=ErrorDetail(message=self.message, type=self.type, param=self.param,
                                               code=self.code)).model_dump()

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


REQUEST_ID_HEADER = b"x-request-id"  # Ray Serve's (ray.serve._private.constants.SERVE_HTTP_REQUEST_ID_HEADER)


def request_id_of(scope) -> str:
    """The request's id: the one Serve's proxy put in its headers, else (outside Serve) a fresh one, kept."""
    state = scope.setdefault("state", {})
    if "request_id" not in state:
        given = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER, b"").decode("latin-1")
        state["request_id"] = given or uuid.uuid4().hex
    return state["request_id"]


def internal_error(request_id: str, what: str = "internal error", status: int = 500, code: str = "internal_error",
                   headers: dict[str, str] | None = None) -> APIError:
    """The answer to an error the client cannot fix: what failed and the request id it is logged under."""
    return APIError(status, f"{what}; the server logged the details under request id {request_id}", code=code,
                    headers=headers)


_FIELD_PREFIX = re.compile(r"^(?:Value error, )?([A-Za-z_][\w.]*): (.*)$", re.S)


def validation_error(errors: list[dict[str, Any]], *, drop_body: bool = True) -> APIError:
    """One APIError (400) from pydantic/FastAPI errors: the first problem, naming its field.

    Model validators here raise "field: message", so their field is recovered from the text.
    """
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ())]
    if drop_body and loc and loc[0] == "body":
        loc = loc[1:]
    message = str(first.get("msg", "invalid request"))
    match = _FIELD_PREFIX.match(message)
    if match and not loc:
        loc, message = [match.group(1)], match.group(2)
    elif message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if first.get("type") == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {loc[-1]}" if loc else message
    elif first.get("type") == "missing":
        message = f"Missing required parameter: {'.'.join(loc)}"
    elif loc:
        got = first.get("input")
        shown = f" (got {got!r})" if isinstance(got, (str, int, float, bool)) or got is None else ""
        message = f"{'.'.join(loc)}: {message}{shown}"
    more = len(errors) - 1
    if more > 0 and first.get("type") not in ("extra_forbidden", "missing"):
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return APIError(400, message, param=".".join(loc) or None, code="invalid_value")


async def parse_body(request: Request, model: type):
    """The request's JSON body validated as `model`; APIError 400 for bad JSON or bad fields."""
    raw = await request.body()
    if not raw:
        raise APIError(400, "the request body is empty: send a JSON object", code="invalid_json")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors()
        if errors and errors[0].get("type") == "json_invalid":
            raise APIError(400, f"could not parse the JSON body of the request: {errors[0].get('msg')}",
                           code="invalid_json") from None
        if errors and errors[0].get("type") == "model_type" and not errors[0].get("loc"):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json") from None
        raise validation_error(errors, drop_body=False) from None


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of `app` with an OpenAI-style body."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return validation_error(list(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return APIError(exc.status_code, message, headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        request_id = request_id_of(request.scope)
        log.error("request %s: unhandled error serving %s %s", request_id, request.method, request.url.path,
                  exc_info=exc)
        return internal_error(request_id).response()
