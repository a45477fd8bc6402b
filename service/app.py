"""The FastAPI application: ``create_app(settings)`` and ``run_server`` (used by ``cmah serve``).

Start-up (lifespan): load the encoder, open the hash store, start the inference engine (warm-up) and
the job runner; then, on a background thread, build the demo gallery if the store is empty and flip
``/ready`` once a search works. Shutdown stops the job runner (its unfinished job stays resumable), then
the inference engine, and closes the job database and the store (which writes its FAISS snapshots).

``run_server`` (``cmah serve``) checks the index database before it listens (a damaged one ends the
command with one line saying what to do, never an empty index on top of it), and on SIGTERM/SIGINT stops
accepting connections, lets in-flight requests finish for up to ``CMAH_SHUTDOWN_TIMEOUT_S``, shuts the
app down as above and returns 0.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from index.errors import StoreCorruptError, StoreLockedError
from index.milvus_replica import ReplicaStore, SharedIndexUnavailable
from index.records import MODALITIES
from index.store import HashStore

from .auth import AdminGuardMiddleware
from .codes_model import CodesModelError, check_codes_model, short
from .engine import InferenceEngine
from .errors import error_response, install_error_handlers
from .indexing import ItemWriter, build_demo_gallery
from .job_store import JOB_DB, JobStore
from .jobs import UPLOAD_DIR, JobRunner
from .memory import MemoryTrimmer
from .metrics import LatencyMiddleware, Metrics
from .objects import LocalObjects, make_objects
from .preflight import check_store
from .reencode import reencode_items
from .routes import ROUTERS
from .scale import WATCH_INTERVAL_S, RoleGuardMiddleware, SharedPublisher, replica_problem, replica_ready
from .schemas import ErrorBody
from .security import SecurityHeadersMiddleware
from .settings import Settings
from .state import ServiceState
from .uploads import MULTIPART_OVERHEAD, BodyLimitMiddleware

logger = logging.getLogger(__name__)

API_VERSION = "0.1.0"

#: Responses every route that takes input can give, documented with the body they really have (service.errors):
#: 422 for invalid parameters (FastAPI would document its own list-of-errors form) and 503 while starting.
COMMON_RESPONSES: dict[int | str, dict] = {
    422: {"model": ErrorBody, "description": "Invalid parameters or body (`invalid_request`)"},
    503: {"model": ErrorBody, "description": "Not ready yet (`not_ready`) or overloaded (`overloaded`)"},
}


def _cpu_threads(settings: Settings) -> int:
    """The CPU threads the model may use (``CMAH_TORCH_THREADS``, else ``CMAH_THREADS`` or all cores)."""
    from model.device import set_cpu_threads

    return set_cpu_threads(settings.torch_threads)


def _start(state: ServiceState) -> None:
    """Load the model and open the store (blocking; run in a worker thread)."""
    from model.encode import Encoder

    s = state.settings
    if s.role != "search":  # a search replica keeps nothing of its own
        s.data_dir.mkdir(parents=True, exist_ok=True)
    threads = _cpu_threads(s)
    state.status = "loading model"
    state.encoder = Encoder.from_weights(s.weights_dir, device=s.device)
    state.encoder.use_cpu_threads(threads, s.cpu_parallel)
    logger.info("model CPU threads: %d (%s)", threads, s.cpu_parallel)
    logger.info("encoder loaded (%s, bits %s) on %s", state.encoder.cfg.name, state.encoder.bits,
                state.encoder.device)
    if s.role == "search":
        _start_replica(state)
        return
    state.status = "opening index"
    state.store = HashStore(s.data_dir, backend=s.backend, milvus_uri=s.milvus_uri, scan=s.scan,
                            check_integrity=not state.store_checked)
    state.objects = LocalObjects(s.data_dir)
    _check_codes(state)
    if s.role == "indexer":  # publish what the journal holds and the shared state lacks (after a crash)
        state.status = "bringing the shared index in line"
        state.shared = SharedPublisher(s)
        state.shared.sync(state.store)
    engine = InferenceEngine(state.encoder, s.max_batch, s.max_wait_ms, s.max_pending,
                             on_batch=state.metrics.observe_batch)
    state.status = "warming up"
    engine.start()
    state.engine = engine
    state.writer = ItemWriter(s.data_dir, state.store, state.encoder, engine.model_lock, shared=state.shared)
    try:  # before the job runner starts: nothing writes files meanwhile (the grace period is a second guard)
        state.writer.sweep_orphans(s.orphan_grace_s)
    except OSError as exc:
        logger.warning("orphan sweep failed (files are kept): %s", exc)
    state.jobs = JobStore(s.data_dir / JOB_DB)
    runner = JobRunner(state.jobs, state.writer, s.data_dir / UPLOAD_DIR, max_file_bytes=s.max_upload_bytes,
                       max_pixels=s.max_pixels, batch_size=s.job_batch_size,
                       max_uncompressed_bytes=s.max_job_uncompressed_bytes, import_root=s.import_root,
                       on_finished=lambda st: state.metrics.jobs.labels(state=st).inc())
    runner.start()
    state.runner = runner
    state.trimmer = MemoryTrimmer(s.malloc_trim_interval_s)
    state.trimmer.start()


def _start_replica(state: ServiceState) -> None:
    """A search replica: the shared Milvus server and bucket, the model; no data directory, jobs nor writer."""
    s = state.settings
    assert state.encoder is not None
    state.status = "connecting to the shared index"
    store = ReplicaStore(str(s.milvus_uri), consistency=s.milvus_consistency)
    state.store = store  # type: ignore[assignment]
    problem = replica_problem(store, state.encoder.weights_id, str(s.milvus_uri))
    if problem:  # the lifespan closes the store
        raise CodesModelError(problem)
    state.objects = make_objects(s, s.data_dir, create=True)
    engine = InferenceEngine(state.encoder, s.max_batch, s.max_wait_ms, s.max_pending,
                             on_batch=state.metrics.observe_batch)
    state.status = "warming up"
    engine.start()
    state.engine = engine
    state.trimmer = MemoryTrimmer(s.malloc_trim_interval_s)
    state.trimmer.start()


def _watch_replica(state: ServiceState, stop: threading.Event) -> None:
    """A search replica is ready while the shared collections exist and hold codes of its weights."""
    assert state.store is not None and state.encoder is not None
    while not stop.is_set():
        ok, status = replica_ready(state.store, state.encoder.weights_id, str(state.settings.milvus_uri))  # type: ignore[arg-type]
        if ok != state.ready or status != state.status:
            (logger.info if ok else logger.warning)("search replica %s: %s", "ready" if ok else "not ready", status)
        state.ready, state.status = ok, status
        stop.wait(WATCH_INTERVAL_S if ok else 0.5)


def _check_codes(state: ServiceState) -> None:
    """Refuse a data directory coded by other weights, unless it holds only the demo gallery: that one
    is re-encoded before the service is ready (:func:`_prepare_gallery`)."""
    assert state.store is not None and state.encoder is not None
    if state.encoder.weights_id is None:  # an encoder built in memory (tests): nothing to compare
        return
    check = check_codes_model(state.store, state.encoder.weights_id)  # (the first items added record them)
    if check.auto_reencode:
        logger.warning("the data directory %s %s; it holds only the demo gallery: re-encoding it with these "
                       "weights (%s…)", state.settings.data_dir, check.reason, short(check.current))
        state.reencode_demo = True
    elif not check.ok:  # the lifespan closes the store
        raise CodesModelError(check.problem(state.settings.data_dir, state.settings.weights_dir))


def _search_works(state: ServiceState) -> bool:
    assert state.store is not None and state.encoder is not None
    bits = max(state.encoder.bits)
    for modality in MODALITIES:
        state.store.search(modality, np.zeros(bits // 8, dtype=np.uint8), bits, 1)
    return True


def _prepare_gallery(state: ServiceState, stop: threading.Event) -> None:
    """Build the demo gallery when the store is empty, then mark the service ready."""
    s = state.settings
    if s.role == "search":
        _watch_replica(state, stop)
        return
    try:
        assert state.store is not None and state.writer is not None
        if state.reencode_demo:
            assert state.encoder is not None and state.encoder.weights_id is not None

            def reencoded(done: int, total: int) -> None:
                state.status = f"re-encoding the demo gallery ({done}/{total})"
                if stop.is_set():
                    raise InterruptedError("shutdown")

            state.status = "re-encoding the demo gallery"
            reencode_items(state.writer, state.encoder.weights_id, drop_missing=True, progress=reencoded)
            state.reencode_demo = False
            if state.shared is not None:  # every record's codes changed
                state.shared.publish_all(state.store)
        if s.build_demo_gallery and state.store.count() == 0:
            state.status = "building demo gallery"

            def progress(done: int, total: int) -> None:
                state.status = f"building demo gallery ({done}/{total})"
                if stop.is_set():
                    raise InterruptedError("shutdown")

            build_demo_gallery(state.writer, s.demo_data, s.job_batch_size, progress)
        if _search_works(state):
            state.ready = True
            state.status = "ready"
            logger.info("service ready (%d items)", state.store.count())
    except InterruptedError:
        state.status = "stopped"
    except Exception as exc:
        logger.exception("start-up failed")
        state.status = f"start-up failed: {type(exc).__name__}: {exc}"


def _stop(state: ServiceState) -> None:
    state.ready = False
    if not state.status.startswith("start-up failed"):
        state.status = "stopping"
    if state.runner is not None:
        state.runner.stop()
    if state.engine is not None:
        state.engine.stop()
    if state.jobs is not None:
        state.jobs.close()
    if state.store is not None:
        state.store.close()
    if state.shared is not None:
        state.shared.close()
    if state.trimmer is not None:
        state.trimmer.stop()
    state.runner = state.trimmer = state.engine = state.jobs = state.store = state.writer = None
    state.shared = state.objects = None
    if not state.status.startswith("start-up failed"):  # keep why it never started
        state.status = "stopped"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.cmah
    stop = threading.Event()
    gallery: threading.Thread | None = None
    try:
        try:
            await run_in_threadpool(_start, state)
        except (StoreCorruptError, StoreLockedError, CodesModelError, SharedIndexUnavailable) as exc:
            logger.error("cannot start: %s", exc)
            state.status = f"start-up failed: {exc}"
            raise
        gallery = threading.Thread(target=_prepare_gallery, args=(state, stop), name="cmah-gallery", daemon=True)
        gallery.start()
        yield
    finally:
        stop.set()
        if gallery is not None:
            await run_in_threadpool(gallery.join)
        await run_in_threadpool(_stop, state)


def create_app(settings: Settings | None = None, *, store_checked: bool = False) -> FastAPI:
    """The service app; nothing is loaded until its lifespan starts.

    ``store_checked``: the caller has just checked the index database (:func:`~service.preflight.check_store`),
    so the store skips its own ``PRAGMA quick_check`` when it opens (it reads the whole file).
    """
    settings = settings or Settings()
    metrics = Metrics()
    state = ServiceState(settings=settings, metrics=metrics, store_checked=store_checked)
    app = FastAPI(title="CMAH retrieval service", version=API_VERSION, lifespan=lifespan,
                  description="Cross-modal hashing retrieval between images and 3D point clouds.")
    app.state.cmah = state
    install_error_handlers(app)

    async def shared_index_unavailable(_request: object, exc: Exception) -> JSONResponse:
        logger.warning("%s", exc)
        return error_response(503, "index_unavailable", "the shared index cannot answer right now; retry shortly",
                              {"Retry-After": "2"})

    app.add_exception_handler(SharedIndexUnavailable, shared_index_unavailable)
    parts = settings.max_form_parts
    for router in ROUTERS:
        # /health, /ready and /metrics take no input and do not need a running model
        app.include_router(router, form_limits={"max_files": parts, "max_fields": parts},
                           responses=None if router.tags == ["health"] else COMMON_RESPONSES)
    from fastapi.responses import FileResponse  # the web UI (docs/ui.md): the page at /, its files under /ui/
    from fastapi.staticfiles import StaticFiles

    static = Path(__file__).parent / "static"
    app.mount("/ui", StaticFiles(directory=static), name="ui")
    app.add_api_route("/", lambda: FileResponse(static / "index.html"), include_in_schema=False)

    def body_limit(path: str) -> int | None:
        if path.startswith("/api/v1/admin/"):
            return settings.max_job_upload_bytes + MULTIPART_OVERHEAD
        if path.startswith("/api/"):
            return settings.max_upload_bytes + MULTIPART_OVERHEAD
        return None

    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit, idle_timeout=settings.body_timeout_s,
                       total_timeout=settings.body_total_timeout_s)
    app.add_middleware(AdminGuardMiddleware, token=settings.admin_token,  # before any admin body is read
                       routes=app.router.routes)
    # a search replica answers admin requests with 421 (naming the indexer), token or not
    app.add_middleware(RoleGuardMiddleware, role=settings.role, indexer_url=settings.indexer_url)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(LatencyMiddleware, metrics=lambda: metrics)
    app.add_middleware(SecurityHeadersMiddleware)
    return app


@contextmanager
def _signals_end_quietly() -> Iterator[None]:
    """After uvicorn's graceful shutdown on SIGTERM/SIGINT it re-raises the signal to the previous handler:
    make that handler a log line, so that the process returns 0 instead of dying of the signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stopped(signum: int, _frame: object) -> None:
        logger.info("stopped by %s", signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_server(host: str = "127.0.0.1", port: int = 8000, data_dir: str | Path | None = None,
               checked: bool = False, role: str | None = None) -> int:
    """Serve the app with uvicorn until SIGTERM/SIGINT; returns the exit code (0, or 1 when start-up failed).

    Raises:
        WeightsError: the weights directory is not usable (checked before the server starts).
        StoreCorruptError: the index database is damaged (checked before the server starts).
        StoreLockedError: another process has the data directory open.

    ``checked``: the caller has already run :func:`~service.preflight.check_store` on these settings. Either
    way the database is checked once: the store opened by the app does not check it again.
    """
    import uvicorn

    from model.weights import SHIPPED_WEIGHTS_DIR, read_manifest

    settings = Settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": Path(data_dir)})
    if role is not None:
        settings = settings.model_copy(update={"role": role})
    level = settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("service", "index", "model"):  # `cmah` may have configured logging already (WARNING)
        logging.getLogger(name).setLevel(level)
    read_manifest(settings.weights_dir or SHIPPED_WEIGHTS_DIR)  # fail fast, with one line, on missing weights
    if not checked and settings.role != "search":  # (a search replica has no index database)
        check_store(settings)  # and on a damaged index database
    server = uvicorn.Server(uvicorn.Config(create_app(settings, store_checked=True), host=host, port=port,
                                           log_level=settings.log_level.lower(),
                                           timeout_graceful_shutdown=settings.shutdown_timeout_s))
    with _signals_end_quietly():
        server.run()
    return 0 if server.started else 1
