"""OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``, for every failure.

Bad input is a 400 (never a 422 or a 5xx: the openai client retries 5xx), a wrong key a 401, a
full queue a 429 with ``Retry-After``. Server faults are a 500 with ``x-should-retry: false`` (a
deterministic failure such as running out of memory would only repeat) and no traceback.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("unclip.server")

INVALID_REQUEST = "invalid_request_error"


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400,
                 type: str = INVALID_REQUEST, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, param=self.param, code=self.code, type=self.type,
                              headers=self.headers)


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   type: str = INVALID_REQUEST, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers={"x-request-id": uuid.uuid4().hex, **(headers or {})})


def from_value_error(err: ValueError) -> APIError:
    """A pipeline ``ValueError`` ("name: what is wrong") as a 400 naming that parameter."""
    text = str(err)
    name, sep, _ = text.partition(":")
    param = name if sep and name.isidentifier() else None
    return APIError(text, param=param, code="invalid_value")


def install_handlers(app: FastAPI) -> None:
    """Answer every failure, FastAPI's own included, in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        return error_response(400, f"Invalid request: {first.get('msg', 'malformed body')}",
                              param=loc[0] if loc else None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        headers = dict(getattr(err, "headers", None) or {})
        if err.status_code >= 500:  # a server fault stays one; the client is told not to retry it
            headers["x-should-retry"] = "false"
        kind = INVALID_REQUEST if err.status_code < 500 else "server_error"
        return error_response(err.status_code, str(err.detail), type=kind, headers=headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, err: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "The server had an error while processing your request.", type="server_error",
                              headers={"x-should-retry": "false"})
