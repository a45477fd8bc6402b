"""Security headers on every response: no MIME sniffing, no framing, no referrer, a Content-Security-Policy.

The web UI (``/`` and ``/ui/...``) loads only its own files (scripts as modules, the vendored three.js,
stylesheets, SVG/PNG images and ``blob:`` images it creates); nothing inline and no ``eval``, so its
policy allows ``'self'`` only. API answers are data, never documents: their policy allows nothing.
The interactive docs (``/docs``, ``/redoc``) load FastAPI's Swagger/ReDoc bundles from a CDN with inline
scripts, so they only get ``frame-ancestors 'none'``.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

UI_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; object-src 'none'; "
          "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
API_CSP = "default-src 'none'; frame-ancestors 'none'"
DOCS_CSP = "frame-ancestors 'none'"
DOCS_PATHS = ("/docs", "/redoc")

COMMON_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


def csp_for(path: str) -> str:
    """The Content-Security-Policy of a response to ``path``."""
    if path == "/" or path.startswith("/ui/"):
        return UI_CSP
    if path.startswith(DOCS_PATHS):
        return DOCS_CSP
    return API_CSP


class SecurityHeadersMiddleware:
    """Adds :data:`COMMON_HEADERS` and the path's Content-Security-Policy to every HTTP response."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [*COMMON_HEADERS, (b"content-security-policy", csp_for(scope.get("path", "")).encode())]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                headers = list(message.get("headers", []))
                headers += [(name, value) for name, value in extra if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
