"""OpenAI-shaped error bodies for every failure the HTTP server reports.

Every error leaves as `{"error": {"message", "type", "param", "code"}}` with
a status that names the cause (400, 401, 404, 405, 413, 429, 503). Messages
say what to do; they never hold a stack trace, a file path or request text.
A client mistake never becomes a 500: FastAPI's validation errors, unknown
routes and wrong methods are all rewritten here.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.serving.validation import pydantic_message

logger = logging.getLogger("preflight.server")

# OpenAI's `type` word for each status we send.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """Raised by handlers; becomes the OpenAI-shaped JSON error with this status."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, object]:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, param), status_code=status, headers=headers)


def describe_validation_error(exc: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    """One line naming the first bad field and why; never echoes the input value."""
    errors = exc.errors()
    if not errors:
        return "the request body is invalid", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        msg = "unknown parameter (this server does not support it)"
    elif kind == "missing":
        msg = "this field is required"
    else:
        msg = pydantic_message(first)
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return (f"{param}: {msg}{more}" if param else f"{msg}{more}"), param


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
_HTTP_MESSAGES = {
    404: "no such route: see GET /v1/models, POST /v1/completions, POST /v1/chat/completions",
    405: "method not allowed on this route",
}


def install_error_handlers(app: FastAPI) -> None:
    """Turn every exception FastAPI can raise into the OpenAI error shape."""

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.code, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_error(exc)
        return error_response(400, message, "invalid_parameter", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        message = _HTTP_MESSAGES.get(status, str(exc.detail) if status < 500 else "internal server error")
        return error_response(status, message, _HTTP_CODES.get(status), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error on %s %s: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc)
        return error_response(500, "internal server error", "internal_error")
