"""Where the items' files live: preview pictures (``previews/<key>.png``) and point clouds (``clouds/<key>.npy``).

* :class:`LocalObjects` -- the data directory (the single-process mode, and the default);
* :class:`S3Objects` -- an S3-compatible bucket (the MinIO of the Milvus stack, or any S3), configured by the
  ``CMAH_S3_*`` settings: what the scale-out mode's search replicas read, so that they keep nothing of their own.

Both take the same relative names (``previews/<key>.png``), so an item's ``preview`` value means the same
file in either. A write is atomic in both (a ``.tmp`` file renamed into place; one ``PutObject``): a reader
sees the whole file or none. Writes are idempotent: writing a name again replaces the file with the same
bytes (the writer derives names from the item's key).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

#: The folders (name prefixes) of the objects; nothing outside them is ever read or written.
PREFIXES = ("previews/", "clouds/")


def _check_name(name: str) -> str:
    """A relative object name inside one of :data:`PREFIXES`, with no path tricks."""
    folder, _, base = name.partition("/")
    if f"{folder}/" not in PREFIXES or not base or "/" in base or base.startswith(".") or "\\" in base:
        raise ValueError(f"not an object name: {name!r}")
    return name


class ObjectStore(Protocol):
    """The files of the items, by relative name."""

    kind: str

    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name`` (replacing what was there); durable when it returns."""

    def get(self, name: str) -> bytes | None:
        """The bytes of ``name``, or ``None`` when there is no such object."""

    def exists(self, name: str) -> bool:
        """Whether ``name`` is stored."""

    def delete(self, names: Iterable[str]) -> None:
        """Remove these objects (missing ones are ignored)."""

    def local_path(self, name: str) -> Path | None:
        """A file on this machine holding ``name`` (served as is), or ``None`` (read it with :meth:`get`)."""


class LocalObjects:
    """Objects as files under a data directory."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for prefix in PREFIXES:
            (self.root / prefix).mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        return self.root / _check_name(name)

    def put(self, name: str, data: bytes) -> None:
        final = self._path(name)
        tmp = final.with_name(final.name + ".tmp")
        try:
            tmp.write_bytes(data)
            tmp.replace(final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get(self, name: str) -> bytes | None:
        path = self.local_path(name)
        return None if path is None else path.read_bytes()

    def exists(self, name: str) -> bool:
        return self.local_path(name) is not None

    def delete(self, names: Iterable[str]) -> None:
        for name in names:
            self._path(name).unlink(missing_ok=True)

    def local_path(self, name: str) -> Path | None:
        try:
            path = self._path(name).resolve()
        except ValueError:
            return None
        folder = (self.root / name.partition("/")[0]).resolve()
        return path if path.parent == folder and path.is_file() else None  # no way out by a link


class S3Objects:
    """Objects in an S3 bucket (``boto3``; MinIO and other S3-compatible servers with path-style addressing).

    Args:
        bucket: the bucket; created when missing if ``create`` (the indexer), else it must exist.
        endpoint: the server's URL (``http://minio:9000``); ``None``: AWS.
        prefix: put before every name (e.g. ``cmah/``), so that one bucket can hold several deployments.
    """

    kind = "s3"

    def __init__(self, bucket: str, *, endpoint: str | None = None, access_key: str | None = None,
                 secret_key: str | None = None, region: str = "us-east-1", prefix: str = "",
                 create: bool = False, timeout_s: float = 10.0) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        cfg = Config(s3={"addressing_style": "path"}, connect_timeout=timeout_s, read_timeout=timeout_s,
                     retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=32)
        self._client: Any = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                                         aws_secret_access_key=secret_key, region_name=region, config=cfg)
        from botocore.exceptions import ClientError

        self._client_error = ClientError
        try:
            self._client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if not create or self._code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
            try:
                self._client.create_bucket(Bucket=bucket)
                logger.info("created the S3 bucket %s at %s", bucket, endpoint or "AWS")
            except ClientError as again:  # another process created it meanwhile
                if self._code(again) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    @staticmethod
    def _code(exc: Exception) -> str:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))

    def _key(self, name: str) -> str:
        return self.prefix + _check_name(name)

    def put(self, name: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)

    def get(self, name: str) -> bytes | None:
        try:
            key = self._key(name)
        except ValueError:
            return None
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self._client_error as exc:
            if self._code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    def exists(self, name: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(name))
        except self._client_error as exc:
            if self._code(exc) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise
        return True

    def delete(self, names: Iterable[str]) -> None:
        keys = [self._key(n) for n in names]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            chunk = keys[start : start + 1000]
            self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk],
                                                                    "Quiet": True})

    def local_path(self, name: str) -> Path | None:
        return None

    def listing(self) -> Iterator[tuple[str, float]]:
        """``(name, last modified as a Unix time)`` of every object under :data:`PREFIXES`."""
        pages = self._client.get_paginator("list_objects_v2")
        for prefix in PREFIXES:
            for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(self.prefix):], obj["LastModified"].timestamp()


def make_objects(settings: Any, data_dir: Path, *, create: bool = False) -> ObjectStore:
    """The object store the settings name: S3 when ``CMAH_S3_BUCKET`` is set, else the data directory."""
    if not settings.s3_bucket:
        return LocalObjects(data_dir)
    secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key is not None else None
    return S3Objects(settings.s3_bucket, endpoint=settings.s3_endpoint, access_key=settings.s3_access_key,
                     secret_key=secret, region=settings.s3_region, prefix=settings.s3_prefix, create=create)
