"""Reading uploads under a size limit: the raw request body (middleware) and each file (in chunks)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError, BodyTooLarge, error_response

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


class BodyLimitMiddleware:
    """Refuses request bodies above a per-path limit while they are received, before they are buffered.

    ``limit_for(path)`` returns the limit in bytes for a request path (``None``: no limit). A declared
    ``Content-Length`` above it is refused at once; otherwise the received bytes are counted.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int | None]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            resp = error_response(413, "too_large", f"request body of {int(declared)} bytes is larger than the "
                                  f"limit of {limit} bytes")
            await resp(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)
