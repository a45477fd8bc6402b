"""Errors and their JSON form ``{"error": code, "detail": message}`` (never a stack trace)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.io import InputError

logger = logging.getLogger(__name__)

#: HTTP status of each :class:`~model.io.InputError` code.
INPUT_ERROR_STATUS: dict[str, int] = {
    "empty": 400,
    "truncated": 400,
    "garbage": 400,
    "count_mismatch": 400,
    "absurd_count": 400,
    "unreadable": 400,
    "unsupported_format": 415,
    "not_an_image": 415,
    "not_a_3d_file": 415,
    "missing_xyz": 422,
    "non_finite": 422,
    "too_few_points": 422,
    "too_many_points": 422,
    "zero_extent": 422,
    "too_large": 413,
    "image_bomb": 413,
}

_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 408: "timeout", 413: "too_large", 415: "unsupported_media_type",
                 422: "invalid_request", 503: "unavailable"}

#: How Starlette's multipart parser words a form with more files or fields than allowed.
_TOO_MANY_PARTS = ("Too many files.", "Too many fields.")


class APIError(Exception):
    """An error answered as ``status`` with ``{"error": code, "detail": detail}``."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


class BodyTooLarge(StarletteHTTPException):
    """The request body passed the size limit while it was being received."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than the limit of {limit} bytes")


class BodyTimeout(StarletteHTTPException):
    """The client stopped sending the request body, or sent it too slowly."""

    def __init__(self, idle: bool, idle_timeout: float, total_timeout: float):
        what = (f"no data for {idle_timeout:g} s" if idle else f"not complete after {total_timeout:g} s")
        super().__init__(408, f"request body timed out ({what})")


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc.status, exc.code, exc.detail, exc.headers)


async def _input_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InputError)
    return error_response(INPUT_ERROR_STATUS.get(exc.code, 400), exc.code, exc.message)


#: The methods a 405's ``Allow`` may name.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> set[str]:
    """The methods of the route that answers 405 and of every documented operation of its path (Starlette's
    405 names only that first route's, e.g. ``POST`` for ``/api/v1/admin/jobs``, which also takes ``GET``)."""
    route = request.scope.get("route")
    methods = set(getattr(route, "methods", None) or ())
    path = getattr(route, "path", None)
    openapi = getattr(request.app, "openapi", None)
    if isinstance(path, str) and callable(openapi):
        methods |= {m.upper() for m in openapi().get("paths", {}).get(path, {}) if m.upper() in _METHODS}
    return methods


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "error")
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    headers = getattr(exc, "headers", None)
    if exc.status_code == 400 and detail.startswith(_TOO_MANY_PARTS):  # Starlette's multipart limits
        code = "too_many_parts"
    if exc.status_code == 405 and (allowed := _allowed_methods(request)):
        headers = {**(headers or {}), "Allow": ", ".join(sorted(allowed))}
    return error_response(exc.status_code, code, detail, headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid_request", _validation_message(exc))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
