"""Reading uploads under a size limit: the raw request body (middleware) and each file (in chunks); the
``file`` part of a one-file form (:data:`OneFile`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from fastapi import Depends, Request, UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model.io.contract import article

from .errors import APIError, BodyTimeout, BodyTooLarge, error_response

CHUNK = 1 << 20
#: Allowance for the multipart framing and form fields around an uploaded file.
MULTIPART_OVERHEAD = 64 * 1024


async def read_upload(file: UploadFile, max_bytes: int) -> bytes:
    """The bytes of ``file``, read in chunks; 413 as soon as more than ``max_bytes`` arrived."""
    parts: list[bytes] = []
    size = 0
    while chunk := await file.read(CHUNK):
        size += len(chunk)
        if size > max_bytes:
            name = f" {file.filename!r}" if file.filename else ""
            raise APIError(413, "too_large", f"upload{name} is larger than the limit of {max_bytes} bytes")
        parts.append(chunk)
    return b"".join(parts)


def content_phrase(found: tuple[str, str]) -> str:
    """What ``sniff_kind`` found, for a message: ``"a PNG image"``, ``"an OBJ 3D file"``."""
    kind, fmt = found
    if kind == "image":
        return f"{article(fmt)} {fmt} image"
    return f"{article(fmt.upper())} {fmt.upper()} 3D file"


async def one_file_part(request: Request) -> None:
    """Refuse a form whose ``file`` field is not one file part, before FastAPI's own validation would keep
    the last of several parts silently (400 ``duplicate_file``) or answer a text field with a type error
    (422 ``invalid_request`` naming the field). No ``file`` at all is left to FastAPI (422, field required).

    A route dependency: the form is the one FastAPI has already parsed (``request.form()`` caches it).
    """
    parts = (await request.form()).getlist("file")
    if len(parts) > 1:
        raise APIError(400, "duplicate_file", f"{len(parts)} parts named 'file': this endpoint takes one file")
    if parts and isinstance(parts[0], str):
        raise APIError(422, "invalid_request", "field 'file' must be a file (a part with a filename), got a text "
                       "field")


#: Dependency of the routes that take one ``file`` part (see :func:`one_file_part`).
OneFile = Depends(one_file_part)


class BodyLimitMiddleware:
    """Bounds request bodies while they are received, before they are buffered.

    ``limit_for(path)`` returns the size limit in bytes for a request path (``None``: no limit). A
    declared ``Content-Length`` above it is refused at once (413); otherwise the received bytes are
    counted and the request fails with 413 as soon as they pass the limit. Every body (limited or not)
    must also keep coming: 408 when no chunk arrives for ``idle_timeout`` seconds or the whole body
    takes longer than ``total_timeout`` seconds (a client trickling bytes cannot hold a request open).
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int | None], idle_timeout: float = 60.0,
                 total_timeout: float = 600.0):
        self.app = app
        self.limit_for = limit_for
        self.idle_timeout = idle_timeout
        self.total_timeout = total_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if limit is not None and declared is not None and declared.isdigit() and int(declared) > limit:
            resp = error_response(413, "too_large", f"request body of {int(declared)} bytes is larger than the "
                                  f"limit of {limit} bytes")
            await resp(scope, receive, send)
            return
        await self.app(scope, self._bounded_receive(receive, limit), send)

    def _bounded_receive(self, receive: Receive, limit: int | None) -> Receive:
        received = 0
        done = False
        deadline = time.monotonic() + self.total_timeout

        async def bounded_receive() -> Message:
            nonlocal received, done
            if done:  # the body is complete: later receives wait for a disconnect, unbounded
                return await receive()
            wait = min(self.idle_timeout, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), timeout=max(wait, 0.0))
            except TimeoutError:
                raise BodyTimeout(wait >= self.idle_timeout, self.idle_timeout, self.total_timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if limit is not None and received > limit:
                    raise BodyTooLarge(limit)
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        return bounded_receive
