"""Response bodies of the HTTP API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable code, e.g. 'truncated' or 'not_a_3d_file'")
    detail: str = Field(description="one human-readable line naming the problem")


class SearchHit(BaseModel):
    rank: int = Field(description="1-based rank")
    id: int
    distance: int = Field(description="Hamming distance to the query code")
    name: str
    label: str | None = Field(description="class name, or null when unknown")
    source: str = Field(description="where the item came from: `demo` (the demo gallery), `job:<id>` (an "
                                    "indexing job), or what `cmah index add` recorded")
    modality: Literal["image", "points"] = Field(description="the kind of item: a picture or a point cloud")
    preview_url: str | None


class SearchResponse(BaseModel):
    bits: int
    k: int
    took_ms: float
    results: list[SearchHit]


class Item(BaseModel):
    id: int
    modality: Literal["image", "points"]
    name: str
    label: str | None
    source: str
    created: str | None
    item_key: str | None
    bits: list[int]
    preview_url: str | None
    points_url: str | None


class ItemPage(BaseModel):
    total: int = Field(description="how many items match the filters (all pages)")
    offset: int
    limit: int
    items: list[Item] = Field(description="at most `limit` items from `offset` on, by id")


class Stats(BaseModel):
    total: int = Field(description="all items")
    modalities: dict[str, int] = Field(description="items per modality (`image`, `points`; 0 included)")
    labels: dict[str, int] = Field(description="items per label (class name), labels in ascending order")
    unlabeled: int = Field(description="items without a label (not in `labels`)")
    sources: dict[str, int] = Field(description="items per source (`demo`, `job:<id>`, ...), in ascending order")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    ready: bool
    detail: str
    items: int


class JobCreated(BaseModel):
    job_id: str
    status_url: str


class PathJob(BaseModel):
    path: str = Field(min_length=1, max_length=4096,
                      description="a .npz or .zip under CMAH_IMPORT_ROOT: relative to it, or absolute")


class JobError(BaseModel):
    name: str | None
    error: str
    detail: str


JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobStatus(BaseModel):
    id: str
    kind: Literal["npz", "zip"]
    filename: str
    state: JobState
    total: int = Field(description="files (zip) or shapes (npz) in the job; 0 until known")
    done: int = Field(description="files or shapes indexed (stored)")
    failed: int
    errors: list[JobError]
    error: str | None = Field(description="why the whole job failed, if it did")
    created: str
    updated: str
    started: str | None = Field(default=None, description="when the current (or last) run began")
    ended: str | None = Field(default=None, description="when the job succeeded, failed or was cancelled")
    items_per_second: float | None = Field(
        default=None, description="files or shapes processed (indexed or failed) per second by the current (or "
        "last) run, from its start to now (or its end); null before the job starts")
    eta_seconds: float | None = Field(
        default=None, description="while running: seconds left at `items_per_second`; null otherwise, and until "
        "the run has processed something")


class JobPage(BaseModel):
    total: int = Field(description="how many jobs are in the states asked for (all pages)")
    offset: int
    limit: int
    jobs: list[JobStatus] = Field(description="at most `limit` jobs from `offset` on, newest first")


class Deleted(BaseModel):
    deleted: int


class BatchResult(BaseModel):
    """The answer to one file of a batch search: its hits, as the single search returns them."""

    filename: str | None
    results: list[SearchHit]


class BatchFileError(BaseModel):
    """A file of a batch search that could not be searched (the others still answer)."""

    filename: str | None
    error: str = Field(description="machine-readable code, as the single search would answer it")
    detail: str = Field(description="one human-readable line naming the problem")


class BatchSearchResponse(BaseModel):
    bits: int
    k: int
    took_ms: float
    queries: list[BatchResult | BatchFileError] = Field(description="one entry per `file` part, in their order")
