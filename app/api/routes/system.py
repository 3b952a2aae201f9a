"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.api.deps import AdminDep
from app.api.metrics import REGISTRY
from app.api.schemas import ERRORS
from app.broker.notify import redis_client
from app.config import get_settings
from app.store.db import current_revision, get_engine, head_revision

router = APIRouter(tags=["system"])


@router.get("/health")
def health() -> dict[str, str]:
    """The process is up (no dependencies checked)."""
    return {"status": "ok"}


def _checks() -> dict[str, Any]:
    checks: dict[str, Any] = {}
    try:
        engine = get_engine()
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        current, head = current_revision(engine), head_revision()
        checks["database"] = "ok"
        checks["migrations"] = "ok" if current == head else f"at {current}, head is {head}"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
        checks["migrations"] = "unknown"
    try:
        redis_client(get_settings().redis_url or "").ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unavailable: {type(exc).__name__}"
    return checks


@router.get("/ready", responses={503: {"description": "a dependency is unavailable"}})
def ready() -> JSONResponse:
    """Database reachable and migrated to head, Redis reachable; 503 otherwise."""
    checks = _checks()
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                        status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response, responses={
    200: {"content": {"text/plain": {"schema": {"type": "string"}}},
          "description": "Prometheus text exposition"},
    **ERRORS,
})
def metrics(_: AdminDep) -> Response:
    """Prometheus exposition (admin key: the numbers span every tenant)."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
