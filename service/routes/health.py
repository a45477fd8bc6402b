"""``/health`` (liveness), ``/ready`` (readiness) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from index.records import MODALITIES

from ..schemas import Health, Ready
from ..state import StateDep

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    return Health()


@router.get("/ready", response_model=Ready, responses={503: {"model": Ready}})
async def ready(state: StateDep) -> Response:
    items = state.store.count() if state.store is not None and not state.store.closed else 0
    body = Ready(ready=state.ready, detail=state.status, items=items)
    return JSONResponse(body.model_dump(), status_code=200 if state.ready else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"}})
async def metrics(state: StateDep) -> Response:
    m = state.metrics
    store, encoder = state.store, state.encoder
    if store is not None and encoder is not None and not store.closed:
        for modality in MODALITIES:
            for bits in encoder.bits:
                m.index_items.labels(modality=modality, bits=str(bits)).set(store.index_count(modality, bits))
    if state.engine is not None:
        m.queue_depth.set(state.engine.pending)
    return Response(m.render(), media_type=m.content_type)
