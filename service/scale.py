"""The roles of a scale-out deployment (``cmah serve --role``, ``CMAH_ROLE``; docs/deployment.md, "Scale-out").

* ``all`` -- the single-process service over its own data directory (the default; nothing here applies);
* ``indexer`` -- the one writer: the single-process service whose :class:`~index.store.HashStore` uses a
  Milvus *server* (its SQLite data directory is the writer's journal) and which publishes what search replicas
  need (:class:`SharedPublisher`): item records and the weights id in Milvus
  (:class:`~index.milvus_replica.MilvusCatalog`), preview pictures and point clouds in an S3 bucket;
* ``search`` -- a stateless replica: the model, a :class:`~index.milvus_replica.ReplicaStore` and the bucket;
  no data directory of its own. Admin requests get 421 ``not_the_indexer`` naming the indexer
  (:class:`RoleGuardMiddleware`); the load balancer routes ``/api/v1/admin/`` to the indexer.

Consistency: the indexer publishes a batch right after committing it, before the job counts it as done, and
Milvus answers reads with ``Strong`` consistency, so a replica sees an item once the indexer's job reports
it. A crash between the commit and the publication leaves items in the journal only: the indexer publishes
them at its next start (:meth:`SharedPublisher.sync`) -- and a batch is retried as a whole, by id, so
nothing is published twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from index.milvus_replica import MilvusCatalog, ReplicaStore, SharedIndexUnavailable
from index.records import ItemRecord
from index.store import CODES_MODEL_KEY, HashStore

from .auth import ADMIN_PREFIX
from .codes_model import CodesModelError, short
from .commands.common import CLIError
from .errors import error_response
from .objects import ObjectStore, make_objects
from .settings import Settings

logger = logging.getLogger(__name__)

ROLES = ("all", "search", "indexer")
#: seconds between a replica's checks that the shared codes were still made by its weights
WATCH_INTERVAL_S = 5.0
_PUBLISH_TRIES = 3


def check_role_settings(settings: Settings) -> None:
    """Refuse (one line, :class:`CLIError`: exit status 2) a role without the shared state it needs."""
    if settings.role == "all":
        return
    missing = []
    if settings.backend != "milvus":
        missing.append("CMAH_BACKEND=milvus")
    uri = settings.milvus_uri or ""
    if not uri.startswith(("http://", "https://", "tcp://", "grpc://")):
        missing.append("CMAH_MILVUS_URI=http://HOST:19530 (a Milvus server, not a milvus-lite file)")
    if not settings.s3_bucket:
        missing.append("CMAH_S3_BUCKET (with CMAH_S3_ENDPOINT, CMAH_S3_ACCESS_KEY, CMAH_S3_SECRET_KEY)")
    if missing:
        raise CLIError(f"--role {settings.role} shares its state through a Milvus server and an S3 bucket; "
                       f"set {', '.join(missing)}")


def replica_problem(store: ReplicaStore, current: str | None, uri: str) -> str | None:
    """Why a replica with weights ``current`` may not answer from this server's codes (``None``: it may)."""
    if current is None:
        return None
    recorded = store.get_value(CODES_MODEL_KEY)
    if recorded is None or recorded == current:
        return None
    return (f"the Milvus server {uri} holds codes made by other weights ({short(recorded)}…) than this replica's "
            f"({short(current)}…): start the search replicas with the indexer's weights (CMAH_WEIGHTS_DIR)")


def preflight_replica(settings: Settings) -> None:
    """Before a search replica loads its model: the server answers and its codes are this replica's weights'.

    Raises:
        CodesModelError: the codes were made by other weights (one line).
        CLIError: the Milvus server cannot be reached.
    """
    from model.manifest import weights_id

    current = weights_id(settings.weights_dir)
    try:
        store = ReplicaStore(str(settings.milvus_uri))
    except Exception as exc:  # noqa: BLE001 - pymilvus raises its own connection errors
        raise CLIError(f"cannot reach the Milvus server {settings.milvus_uri}: {exc}") from None
    try:
        problem = replica_problem(store, current, str(settings.milvus_uri))
    except SharedIndexUnavailable as exc:
        raise CLIError(str(exc)) from None
    finally:
        store.close()
    if problem:
        raise CodesModelError(problem)


def open_objects(settings: Settings) -> ObjectStore:
    """The S3 bucket of a scale-out role (created when missing)."""
    return make_objects(settings, settings.data_dir, create=True)


class SharedPublisher:
    """What the indexer writes for the search replicas, besides the code collections its store keeps."""

    def __init__(self, settings: Settings, objects: ObjectStore | None = None) -> None:
        from index.milvus_replica import _client

        self.objects = objects if objects is not None else open_objects(settings)
        self._client = _client(str(settings.milvus_uri))
        self.catalog = MilvusCatalog(self._client, create=True)
        self._dirty = False
        self._codes_model: str | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self._client.close()

    def _retry(self, what: str, fn: Callable[[], Any]) -> Any:
        for attempt in range(1, _PUBLISH_TRIES + 1):
            try:
                return fn()
            except Exception as exc:
                if attempt == _PUBLISH_TRIES:
                    self._dirty = True  # the next publication first brings everything in line
                    raise SharedIndexUnavailable(f"could not {what} in Milvus: {exc}") from exc
                logger.warning("could not %s in Milvus (try %d of %d): %s", what, attempt, _PUBLISH_TRIES, exc)
                time.sleep(attempt)
        return None  # pragma: no cover

    def sync(self, store: HashStore) -> tuple[int, int]:
        """Publish what the journal holds and Milvus lacks, remove what it no longer holds; and the weights id."""
        with self._lock:
            done = self._retry("bring the item records in line", lambda: self.catalog.sync(store))
            self._publish_codes_model(store)
            self._dirty = False
            return done

    def _publish_codes_model(self, store: HashStore) -> None:
        value = store.get_value(CODES_MODEL_KEY)
        if value != self._codes_model:
            self._retry("record the weights id", lambda: self.catalog.set_value(CODES_MODEL_KEY, value))
            self._codes_model = value

    def publish(self, store: HashStore, ids: Sequence[int]) -> None:
        """Publish the records of items just committed (an upsert by id: a retry adds nothing twice)."""
        if self._dirty:
            self.sync(store)
        with self._lock:
            self._publish_codes_model(store)
            records = [r for r in store.get_many(ids) if r is not None]
            self._retry("publish the item records", lambda: self.catalog.publish(records))

    def publish_all(self, store: HashStore) -> None:
        """Publish every record again (after a re-encoding changed the codes of all items)."""
        with self._lock:
            self._publish_codes_model(store)
            after = 0
            while ids := store.item_ids(after, 1000):
                records = [r for r in store.get_many(ids) if r is not None]
                self._retry("publish the item records", lambda rs=records: self.catalog.publish(rs))
                after = ids[-1]

    def sweep_objects(self, previews: set[str], keys: set[str], cutoff: float) -> int:
        """Delete the bucket's objects that no item refers to, last modified before ``cutoff`` (a Unix time):
        the files of a batch that crashed before its commit. Returns how many were deleted."""
        listing = getattr(self.objects, "listing", None)
        if listing is None:
            return 0
        orphans = [name for name, mtime in listing() if mtime < cutoff and not (
            name in previews if name.startswith("previews/") else name[len("clouds/"):].removesuffix(".npy") in keys)]
        self.objects.delete(orphans)
        if orphans:
            logger.info("deleted %d object(s) of the bucket that no item refers to", len(orphans))
        return len(orphans)

    def unpublish(self, records: Sequence[ItemRecord], unreferenced: Sequence[str]) -> None:
        """Remove deleted items' records, then the objects no remaining item refers to."""
        with self._lock:
            self._retry("remove the item records", lambda: self.catalog.remove(int(r.id) for r in records))  # type: ignore[arg-type]
            self.objects.delete(unreferenced)


def replica_ready(store: ReplicaStore, encoder_weights: str | None, uri: str) -> tuple[bool, str]:
    """``(ready, status)`` of a search replica now."""
    try:
        if not store.ready():
            return False, "waiting for the indexer to create the shared collections"
        problem = replica_problem(store, encoder_weights, uri)
    except SharedIndexUnavailable as exc:
        return False, f"the Milvus server cannot answer ({exc})"
    if problem:
        return False, f"refusing to search: {problem}"
    return True, "ready"


class RoleGuardMiddleware:
    """On a search replica: 421 ``not_the_indexer`` for every admin request, before any body is read."""

    def __init__(self, app: ASGIApp, role: str, indexer_url: str | None, prefix: str = ADMIN_PREFIX) -> None:
        self.app = app
        self.active = role == "search"
        self.prefix = prefix
        where = f"the indexer at {indexer_url.rstrip('/')}" if indexer_url else "the indexer (CMAH_ROLE=indexer)"
        self.detail = (f"this is a search replica (CMAH_ROLE=search): admin requests are served by {where}; "
                       "send them there (the load balancer routes /api/v1/admin/ to it)")
        self.headers = {"Location": indexer_url.rstrip("/")} if indexer_url else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.active and scope["type"] == "http" and scope.get("path", "").startswith(self.prefix):
            resp = error_response(421, "not_the_indexer", self.detail, self.headers)
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)
