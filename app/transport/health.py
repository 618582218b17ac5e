"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.transport.deps import RuntimeDep

router = APIRouter(tags=["health"])


@router.get(
    "/healthz", responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}}
)
async def healthz() -> dict[str, str]:
    """200 while the process runs."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        200: {"content": {"application/json": {"example": {"database": "ok", "broker": "ok"}}}},
        503: {"content": {"application/json": {"example": {"database": "ok", "broker": "down"}}}},
    },
)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """200 when the database and the broker answer, else 503."""
    database = await runtime.database_ready()
    broker = await runtime.broker.ping()
    body: dict[str, object] = {
        "database": "ok" if database else "down",
        "broker": "ok" if broker else "down",
        "broker_stats": runtime.broker.stats,
    }
    return JSONResponse(body, status_code=200 if database and broker else 503)
