"""Service configuration: environment variables with the ``CMAH_`` prefix (or a ``.env`` file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The demo set indexed into an empty store at start-up (319 ModelNet40 shapes).
DEMO_DATA = Path(__file__).resolve().parent.parent / "model" / "assets" / "demo_modelnet40.npz"


class Settings(BaseSettings):
    """Every knob of the HTTP service; see docs/api.md for the table."""

    model_config = SettingsConfigDict(env_prefix="CMAH_", env_file=".env", extra="ignore")

    data_dir: Path = Path("./.cmah-data")
    weights_dir: Path | None = None
    device: str = "auto"
    max_upload_bytes: int = Field(32 * 1024 * 1024, ge=1)
    max_job_upload_bytes: int = Field(1024 * 1024 * 1024, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)
    admin_token: SecretStr | None = None
    backend: Literal["faiss", "milvus"] = "faiss"
    #: Milvus server URI for backend="milvus" (e.g. http://milvus:19530); unset: a milvus-lite file in data_dir
    milvus_uri: str | None = None
    #: What this process does (docs/deployment.md, "Scale-out"): "all" = the single-process service (search, items
    #: and admin jobs over its own data dir), "indexer" = the one writer of a scale-out deployment (admin jobs and
    #: item writes into the shared Milvus server and S3 bucket), "search" = a stateless search replica over them
    role: Literal["all", "search", "indexer"] = "all"
    #: Milvus consistency level of a search replica's searches: "Strong" = a new item is found as soon as the indexer
    #: acknowledged it (each search waits up to one Milvus time tick, ~200 ms), "Bounded" = found within Milvus's
    #: common.gracefulTime (5 s by default), no wait; see docs/deployment.md ("Consistency")
    milvus_consistency: Literal["Strong", "Bounded", "Eventually"] = "Strong"
    #: Where a search replica sends admin clients (named in its 421 answer), e.g. http://indexer:8000
    indexer_url: str | None = None
    #: S3 bucket of the items' preview pictures and point clouds; unset: files in the data dir (roles search and
    #: indexer need it). With the Milvus stack of docker-compose.yml: its MinIO (endpoint http://minio:9000)
    s3_bucket: str | None = None
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    #: put before every object name, so that one bucket can hold several deployments (e.g. "cmah/")
    s3_prefix: str = ""
    #: Full scan of the FAISS backend (index.flat.SCAN_CHOICES): "auto" = the compiled numba kernel once it is
    #: compiled or loaded from numba's cache (FAISS's scan meanwhile, and without numba), "numba" = the kernel
    #: only (the store waits for it at start; an error without numba), "faiss" = FAISS's scan only
    scan: Literal["auto", "numba", "faiss"] = "auto"
    max_batch: int = Field(32, ge=1)
    max_wait_ms: float = Field(5.0, ge=0)
    max_pending: int = Field(256, ge=1)
    torch_threads: int | None = Field(None, ge=1)
    #: how the model uses those CPU threads: "chunks" = a batch is split into that many chunks run on as many
    #: threads with one intra-op thread each (faster on small CPUs, see model/encode.py), "intra-op" = one call
    #: with that many torch intra-op threads
    cpu_parallel: Literal["chunks", "intra-op"] = "chunks"
    build_demo_gallery: bool = True
    demo_data: Path = DEMO_DATA
    job_batch_size: int = Field(32, ge=1)
    #: most bytes the members of one zip job may inflate to (counted while decompressing)
    max_job_uncompressed_bytes: int = Field(4 * 1024 * 1024 * 1024, ge=1)
    #: most jobs queued or running; beyond, new jobs are refused with 429
    max_queued_jobs: int = Field(8, ge=1)
    #: directory whose files may be indexed in place by POST /api/v1/admin/jobs/from-path; unset: disabled
    import_root: Path | None = None
    cors_origins: list[str] = []
    log_level: str = "INFO"
    #: On SIGTERM/SIGINT: longest wait for in-flight requests before they are cancelled (then the store is closed)
    shutdown_timeout_s: float = Field(30.0, ge=0)
    #: Longest wait for the next chunk of a request body (408 when it passes)
    body_timeout_s: float = Field(60.0, gt=0)
    #: Longest time to receive a whole request body, however it trickles in (408 when it passes)
    body_total_timeout_s: float = Field(600.0, gt=0)
    #: Most files and most other fields in one multipart form (more: 400 ``too_many_parts``)
    max_form_parts: int = Field(8, ge=1)
    #: Preview / cloud files that no item refers to are deleted at start once they are this old (seconds)
    orphan_grace_s: float = Field(600.0, ge=0)
    #: Seconds between two ``malloc_trim(0)`` calls, which give the heap memory freed by the model, renders and
    #: uploads back to the system (glibc only; 0 = never). See service/memory.py
    malloc_trim_interval_s: float = Field(10.0, ge=0)
