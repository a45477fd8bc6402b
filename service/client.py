"""A typed Python client of the CMAH service, over httpx.

```python
from service.client import CMAHClient, CMAHError

with CMAHClient("http://127.0.0.1:8000", token=None) as c:
    hits = c.search("chair.png", k=5).results                     # image -> points (the other modality)
    answers = c.search_batch(["a.ply", "b.ply"], target="points")  # one request, one model call
    job = c.add_job("shapes.npz")                                  # admin: needs the token
    status = c.wait_job(job.job_id, on_progress=print)
```

The query modality of a file (picture or 3D file) is sniffed from its content (:func:`query_kind`), as the
service does; ``target`` is ``"points"`` or ``"images"`` (default: the other modality). Answers are the
service's own response models (:mod:`service.schemas`). Every failure is a :class:`CMAHError` carrying the
service's error code and detail (``status`` is the HTTP status, ``None`` when no answer came: a file that
cannot be read here, an unreachable service, a timeout).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from model.io import sniff_kind

from .schemas import BatchFileError, BatchResult, BatchSearchResponse, JobCreated, JobStatus, Ready, SearchResponse

#: A query file: a path, or ``(filename, bytes)``.
QueryFile = str | os.PathLike[str] | tuple[str, bytes]
#: Most files per batch request (the service's limit, service.routes.batch.MAX_BATCH_FILES).
MAX_BATCH_FILES = 32
#: Job states after which a job does not change any more.
FINAL_JOB_STATES = frozenset({"succeeded", "failed", "cancelled"})
#: Bytes read to sniff a file's modality.
SNIFF_BYTES = 1 << 16

M = TypeVar("M", bound=BaseModel)


class CMAHError(Exception):
    """A refusal of the service (``status`` and its ``{"error", "detail"}``), or a failure before any answer
    (``status`` ``None``: ``code`` ``unreachable``, ``timeout``, ``no_such_file``, ``unsupported_format`` ...)."""

    def __init__(self, code: str, detail: str, status: int | None = None):
        super().__init__(f"{code}: {detail}" if status is None else f"{status} {code}: {detail}")
        self.code = code
        self.detail = detail
        self.status = status


def query_kind(data: bytes, name: str = "file") -> str:
    """``"image"`` or ``"points"``: what ``data`` is by its content (model.io.sniff_kind)."""
    found = sniff_kind(data[:SNIFF_BYTES])
    if found is None:
        raise CMAHError("unsupported_format", f"{name}: neither a picture (PNG, JPEG, WebP, BMP, GIF, TIFF) nor a "
                        "3D file (PLY, OFF, OBJ, PCD, XYZ/TXT, NPY) by its content")
    return found[0]


def read_query(file: QueryFile) -> tuple[str, bytes]:
    """``(filename, bytes)`` of a query file."""
    if isinstance(file, tuple):
        return file
    path = Path(file)
    try:
        return path.name, path.read_bytes()
    except FileNotFoundError:
        raise CMAHError("no_such_file", f"{path}: no such file") from None
    except IsADirectoryError:
        raise CMAHError("no_such_file", f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise CMAHError("unreadable", f"{path}: {exc.strerror or exc}") from None


def route(query: str, target: str | None) -> str:
    """The search path segment ``{query}-to-{target}``: ``image-to-points``, ``points-to-images`` ..."""
    if target is None:
        target = "images" if query == "points" else "points"
    target = {"image": "images", "point": "points"}.get(target, target)
    if target not in ("points", "images"):
        raise CMAHError("invalid_request", f"target must be 'points' or 'images', got {target!r}")
    return f"{query}-to-{target}"


class CMAHClient:
    """The service at ``url`` (e.g. ``http://127.0.0.1:8000``); ``token``: the admin token, for jobs.

    ``timeout``: seconds per network operation (connect, each read and write). ``transport``: an httpx
    transport instead of the network (tests: ``httpx.ASGITransport``; then use the client in async code only
    through its own thread, as httpx's sync client needs a sync transport: ``fastapi.testclient`` works).
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        self.token = token
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                  headers={"Accept": "application/json"})

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CMAHClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _request(self, method: str, path: str, model: type[M], accept: tuple[int, ...] = (), **kwargs: Any) -> M:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise CMAHError("timeout", f"{self.url}{path}: no answer in time ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise CMAHError("unreachable", f"cannot reach {self.url}: {exc or type(exc).__name__}") from None
        if resp.status_code >= 400 and resp.status_code not in accept:
            raise _refusal(resp)
        try:
            return model.model_validate(resp.json())
        except (ValueError, ValidationError) as exc:
            raise CMAHError("bad_response", f"{method} {path} answered {resp.status_code} with an unexpected "
                            f"body: {str(exc).splitlines()[0]}", resp.status_code) from None

    # ------------------------------------------------------------------ search
    def ready(self) -> Ready:
        """``/ready``: ``ready`` is false (and ``detail`` says what it does) while the service starts."""
        return self._request("GET", "/ready", Ready, accept=(503,))

    def search(self, file: QueryFile, target: str | None = None, *, k: int = 10, bits: int = 64,
               label: Sequence[str] | str | None = None, source: Sequence[str] | str | None = None,
               max_distance: int | None = None, distinct: str | None = None) -> SearchResponse:
        """Search with one picture or 3D file (its modality sniffed from its content)."""
        name, data = read_query(file)
        path = route(query_kind(data, name), target)
        params = _params(k, bits, label, source, max_distance, distinct)
        return self._request("POST", f"/api/v1/search/{path}", SearchResponse, params=params,
                             files={"file": (name, data, "application/octet-stream")})

    def search_batch(self, files: Sequence[QueryFile], target: str | None = None, *, k: int = 10, bits: int = 64,
                     label: Sequence[str] | str | None = None, source: Sequence[str] | str | None = None,
                     max_distance: int | None = None, distinct: str | None = None) -> BatchSearchResponse:
        """One batch request (1 to 32 files of one modality): one answer per file, in order."""
        read = [read_query(f) for f in files]
        if not 1 <= len(read) <= MAX_BATCH_FILES:
            raise CMAHError("invalid_request", f"a batch takes 1 to {MAX_BATCH_FILES} files, got {len(read)}")
        kinds = {query_kind(data, name) for name, data in read}
        if len(kinds) > 1:
            raise CMAHError("invalid_request", "a batch takes files of one modality (pictures or 3D files); "
                            "search_many() splits mixed ones")
        path = route(kinds.pop(), target)
        params = _params(k, bits, label, source, max_distance, distinct)
        parts = [("file", (name, data, "application/octet-stream")) for name, data in read]
        return self._request("POST", f"/api/v1/search/{path}/batch", BatchSearchResponse, params=params,
                             files=parts)

    def search_many(self, files: Sequence[QueryFile], target: str | None = None, **options: Any
                    ) -> list[tuple[str, BatchResult | BatchFileError]]:
        """Any number of files of either modality: batch requests per modality (32 files each, halved while
        the service finds a request too large); returns ``(path, answer)`` per file in the given order, the
        path being ``"image-to-points"`` etc. A file too large on its own gets a ``too_large`` answer."""
        read = [read_query(f) for f in files]
        groups: dict[str, list[int]] = {}
        for n, (name, data) in enumerate(read):
            groups.setdefault(route(query_kind(data, name), target), []).append(n)
        out: list[tuple[str, BatchResult | BatchFileError] | None] = [None] * len(read)

        def send(path: str, members: list[int]) -> None:
            try:
                answer = self.search_batch([read[n] for n in members], path.split("-to-")[1], **options)
            except CMAHError as exc:
                if exc.status != 413:
                    raise
                if len(members) == 1:
                    out[members[0]] = (path, BatchFileError(filename=read[members[0]][0], error=exc.code,
                                                            detail=exc.detail))
                    return
                half = len(members) // 2
                send(path, members[:half])
                send(path, members[half:])
                return
            for n, entry in zip(members, answer.queries, strict=True):
                out[n] = (path, entry)

        for path, members in groups.items():
            for s in range(0, len(members), MAX_BATCH_FILES):
                send(path, members[s:s + MAX_BATCH_FILES])
        return [o for o in out if o is not None]

    # ------------------------------------------------------------------ admin jobs
    def add_job(self, file: str | os.PathLike[str] | IO[bytes], filename: str | None = None) -> JobCreated:
        """Upload a dataset ``.npz`` or a ``.zip`` of pictures and 3D files as an indexing job (admin)."""
        if isinstance(file, str | os.PathLike):
            path = Path(file)
            if not path.is_file():
                raise CMAHError("no_such_file", f"{path}: no such file")
            with open(path, "rb") as fh:
                return self.add_job(fh, filename or path.name)
        return self._request("POST", "/api/v1/admin/jobs", JobCreated, headers=self._admin_headers(),
                             files={"file": (filename or "upload", file, "application/octet-stream")})

    def add_path_job(self, path: str) -> JobCreated:
        """Index a ``.npz`` / ``.zip`` that lives on the server under its ``CMAH_IMPORT_ROOT`` (admin)."""
        return self._request("POST", "/api/v1/admin/jobs/from-path", JobCreated, headers=self._admin_headers(),
                             json={"path": path})

    def job(self, job_id: str) -> JobStatus:
        """A job's status (admin)."""
        return self._request("GET", f"/api/v1/admin/jobs/{job_id}", JobStatus, headers=self._admin_headers())

    def wait_job(self, job_id: str, *, poll_s: float = 0.5, timeout: float | None = None,
                 on_progress: Callable[[JobStatus], None] | None = None) -> JobStatus:
        """Poll a job until it has ended (succeeded, failed or cancelled); ``on_progress`` gets every status.
        A ``timeout`` (seconds) that passes first is a :class:`CMAHError` ``timeout`` (the job goes on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.job(job_id)
            if on_progress is not None:
                on_progress(status)
            if status.state in FINAL_JOB_STATES:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise CMAHError("timeout", f"job {job_id} is still {status.state} after {timeout:g} s")
            time.sleep(poll_s)


def _params(k: int, bits: int, label: Sequence[str] | str | None, source: Sequence[str] | str | None,
            max_distance: int | None, distinct: str | None) -> list[tuple[str, str | int]]:
    params: list[tuple[str, str | int]] = [("k", k), ("bits", bits)]
    params += [("label", v) for v in _many(label)] + [("source", v) for v in _many(source)]
    if max_distance is not None:
        params.append(("max_distance", max_distance))
    if distinct is not None:
        params.append(("distinct", distinct))
    return params


def _many(value: Iterable[str] | str | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _refusal(resp: httpx.Response) -> CMAHError:
    """The :class:`CMAHError` of an error answer: its ``{"error", "detail"}``, or its status and text."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return CMAHError(body["error"], str(body.get("detail", "")), resp.status_code)
    text = " ".join(resp.text.split())[:200] or resp.reason_phrase
    return CMAHError(f"http_{resp.status_code}", text, resp.status_code)
