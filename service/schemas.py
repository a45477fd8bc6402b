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


class JobStatus(BaseModel):
    id: str
    kind: Literal["npz", "zip"]
    filename: str
    state: Literal["queued", "running", "succeeded", "failed"]
    total: int
    done: int
    failed: int
    errors: list[JobError]
    error: str | None = Field(description="why the whole job failed, if it did")
    created: str
    updated: str


class Deleted(BaseModel):
    deleted: int
