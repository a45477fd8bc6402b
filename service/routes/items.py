"""``GET /api/v1/items/{id}`` and its preview PNG and point cloud PLY."""

from __future__ import annotations

import io
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from index.records import ItemRecord
from model.io import write_ply

from ..errors import APIError
from ..schemas import ErrorBody, Item
from ..state import Running, RunningDep

router = APIRouter(prefix="/api/v1/items", tags=["items"])

ItemId = Annotated[int, Path(ge=1, description="item id")]
NOT_FOUND = {404: {"model": ErrorBody}}


def get_item(run: Running, item_id: int) -> ItemRecord:
    rec = run.store.get(item_id)
    if rec is None:
        raise APIError(404, "not_found", f"no item with id {item_id}")
    return rec


def cloud_name(item_key: str | None) -> str | None:
    """The object name of a cloud item's points (``None`` for a key the writer never makes)."""
    return f"clouds/{item_key}.npy" if item_key and item_key.isalnum() else None


def item_body(run: Running, rec: ItemRecord) -> Item:
    cloud = cloud_name(rec.item_key) if rec.modality == "points" else None
    has_cloud = cloud is not None and run.objects.exists(cloud)
    return Item(id=int(rec.id or 0), modality=rec.modality, name=rec.name, label=rec.label,  # type: ignore[arg-type]
                source=rec.source, created=rec.created, item_key=rec.item_key, bits=sorted(rec.codes),
                preview_url=f"/api/v1/items/{rec.id}/preview.png" if rec.preview else None,
                points_url=f"/api/v1/items/{rec.id}/points.ply" if has_cloud else None)


@router.get("/{item_id}", response_model=Item, responses=NOT_FOUND)
async def read_item(run: RunningDep, item_id: ItemId) -> Item:
    return item_body(run, get_item(run, item_id))


@router.get("/{item_id}/preview.png", response_class=FileResponse,
            responses={**NOT_FOUND, 200: {"content": {"image/png": {}}, "description": "the preview image"}})
async def read_preview(run: RunningDep, item_id: ItemId) -> Response:
    rec = get_item(run, item_id)
    path = run.objects.local_path(rec.preview) if rec.preview else None
    if path is not None:
        return FileResponse(path, media_type="image/png")
    data = await run_in_threadpool(run.objects.get, rec.preview) if rec.preview else None
    if data is None:
        raise APIError(404, "no_preview", f"item {item_id} has no preview")
    return Response(data, media_type="image/png")


def _ply_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    write_ply(buf, np.load(io.BytesIO(data), allow_pickle=False))
    return buf.getvalue()


@router.get("/{item_id}/points.ply", response_class=Response,
            responses={**NOT_FOUND, 200: {"content": {"application/octet-stream": {}},
                                          "description": "the point cloud as a binary PLY file"}})
async def read_points(run: RunningDep, item_id: ItemId) -> Response:
    rec = get_item(run, item_id)
    if rec.modality != "points":
        raise APIError(404, "not_a_point_item", f"item {item_id} is an image item; point clouds are served for "
                       "point items only")
    name = cloud_name(rec.item_key)
    data = await run_in_threadpool(run.objects.get, name) if name else None
    if data is None:
        raise APIError(404, "no_points", f"the point cloud of item {item_id} is not stored")
    body = await run_in_threadpool(_ply_bytes, data)
    return Response(body, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="item-{item_id}.ply"'})
