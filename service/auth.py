"""Admin authentication: the bearer-token check of the ``/api/v1/admin/...`` routes.

The check runs twice: as :class:`AdminGuardMiddleware`, in front of the app, and as the routes' dependency
(:func:`service.state.require_admin`). The middleware is the one that matters for uploads: FastAPI reads and
parses a multipart body (spooling its files to disk) before it runs a route's dependencies, so the dependency
alone would let anyone send up to ``CMAH_MAX_JOB_UPLOAD_BYTES`` before being refused.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from pydantic import SecretStr
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import APIError, error_response

ADMIN_PREFIX = "/api/v1/admin/"


def admin_refusal(token: SecretStr | None, authorization: str) -> APIError | None:
    """Why a request with this ``Authorization`` header may not use the admin routes (``None``: it may).

    403 ``admin_disabled`` when no token is configured, 401 without a bearer token, 403 for a wrong one
    (constant-time comparison).
    """
    if token is None or not token.get_secret_value():
        return APIError(403, "admin_disabled", "admin endpoints are disabled: CMAH_ADMIN_TOKEN is not set")
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return APIError(401, "unauthorized", "missing bearer token (Authorization: Bearer <CMAH_ADMIN_TOKEN>)",
                        {"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        return APIError(403, "forbidden", "invalid admin token")
    return None


def _wrong_method_only(routes: Sequence[BaseRoute], scope: Scope) -> bool:
    """The path is a route's but none takes the request's method: the app answers 405 without reading the body."""
    matches = {route.matches(scope)[0] for route in routes}
    return Match.PARTIAL in matches and Match.FULL not in matches


class AdminGuardMiddleware:
    """Answers requests under :data:`ADMIN_PREFIX` without the admin token before any of their body is read.

    A method that no admin route takes at that path (``OPTIONS``, ``PUT`` ...) is let through to the app's
    405 with ``Allow``: ``routes`` are the app's routes. Unknown admin paths still need the token.
    """

    def __init__(self, app: ASGIApp, token: SecretStr | None, routes: Sequence[BaseRoute] = (),
                 prefix: str = ADMIN_PREFIX):
        self.app = app
        self.token = token
        self.routes = routes
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope.get("path", "").startswith(self.prefix)
                and not _wrong_method_only(self.routes, scope)):
            header = next((v for k, v in scope.get("headers") or [] if k.lower() == b"authorization"), b"")
            refusal = admin_refusal(self.token, header.decode("latin-1"))
            if refusal is not None:
                resp = error_response(refusal.status, refusal.code, refusal.detail, refusal.headers)
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)
