"""What the running service holds (one per app) and the dependencies that hand it to routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from index.store import HashStore
from model.encode import Encoder

from .auth import admin_refusal
from .engine import InferenceEngine
from .errors import APIError
from .indexing import ItemWriter
from .job_store import JobStore
from .jobs import JobRunner
from .memory import MemoryTrimmer
from .metrics import Metrics
from .objects import ObjectStore
from .scale import SharedPublisher
from .settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    encoder: Encoder | None = None
    #: a HashStore, or on a search replica (role "search") an index.milvus_replica.ReplicaStore
    store: HashStore | None = None
    engine: InferenceEngine | None = None
    writer: ItemWriter | None = None
    jobs: JobStore | None = None
    runner: JobRunner | None = None
    trimmer: MemoryTrimmer | None = None
    #: where the items' preview and cloud files are read from (the data dir, or the S3 bucket of a replica)
    objects: ObjectStore | None = None
    #: the indexer of a scale-out deployment: what it publishes for the search replicas (service/scale.py)
    shared: SharedPublisher | None = None
    ready: bool = False
    status: str = "starting"
    #: the index database was checked (``PRAGMA quick_check``) before start-up: opening the store skips it
    store_checked: bool = False
    #: the store holds only the demo gallery, coded by other weights: re-encode it before being ready
    reencode_demo: bool = False


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
    objects: ObjectStore


def get_running(state: StateDep) -> Running:
    # a search replica (role "search") has no writer, jobs nor runner: its admin routes answer 421 before this
    needed = (state.encoder, state.store, state.engine, state.objects)
    if state.settings.role != "search":
        needed += (state.writer, state.jobs, state.runner)
    if None in needed:
        raise APIError(503, "not_ready", f"the service is not ready yet ({state.status})", {"Retry-After": "5"})
    return Running(state.settings, state.encoder, state.store, state.engine, state.writer,  # type: ignore[arg-type]
                   state.jobs, state.runner, state.metrics, state.objects)  # type: ignore[arg-type]


RunningDep = Annotated[Running, Depends(get_running)]


#: Declares the admin routes' bearer token in the OpenAPI document (the check is :func:`require_admin`).
ADMIN_BEARER = HTTPBearer(auto_error=False, scheme_name="adminToken", description="the CMAH_ADMIN_TOKEN")


def require_admin(request: Request, state: StateDep,
                  _: Annotated[HTTPAuthorizationCredentials | None, Depends(ADMIN_BEARER)]) -> None:
    """Bearer-token check of the admin routes (also done, before the body is read, by AdminGuardMiddleware)."""
    refusal = admin_refusal(state.settings.admin_token, request.headers.get("authorization", ""))
    if refusal is not None:
        raise refusal


AdminDep = Depends(require_admin)
