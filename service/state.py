"""What the running service holds (one per app) and the dependencies that hand it to routes."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from index.store import HashStore
from model.encode import Encoder

from .engine import InferenceEngine
from .errors import APIError
from .indexing import ItemWriter
from .jobs import JobRunner, JobStore
from .metrics import Metrics
from .settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    encoder: Encoder | None = None
    store: HashStore | None = None
    engine: InferenceEngine | None = None
    writer: ItemWriter | None = None
    jobs: JobStore | None = None
    runner: JobRunner | None = None
    ready: bool = False
    status: str = "starting"


def get_state(request: Request) -> ServiceState:
    return request.app.state.cmah


StateDep = Annotated[ServiceState, Depends(get_state)]


@dataclass
class Running:
    """The parts a request needs once the model and the store are up."""

    settings: Settings
    encoder: Encoder
    store: HashStore
    engine: InferenceEngine
    writer: ItemWriter
    jobs: JobStore
    runner: JobRunner
    metrics: Metrics


def get_running(state: StateDep) -> Running:
    if None in (state.encoder, state.store, state.engine, state.writer, state.jobs, state.runner):
        raise APIError(503, "not_ready", f"the service is not ready yet ({state.status})", {"Retry-After": "5"})
    return Running(state.settings, state.encoder, state.store, state.engine, state.writer,  # type: ignore[arg-type]
                   state.jobs, state.runner, state.metrics)  # type: ignore[arg-type]


RunningDep = Annotated[Running, Depends(get_running)]


def require_admin(request: Request, state: StateDep) -> None:
    """Bearer-token check of the admin routes (constant-time comparison)."""
    token = state.settings.admin_token
    if token is None or not token.get_secret_value():
        raise APIError(403, "admin_disabled", "admin endpoints are disabled: CMAH_ADMIN_TOKEN is not set")
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise APIError(401, "unauthorized", "missing bearer token (Authorization: Bearer <CMAH_ADMIN_TOKEN>)",
                       {"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        raise APIError(403, "forbidden", "invalid admin token")


AdminDep = Depends(require_admin)
