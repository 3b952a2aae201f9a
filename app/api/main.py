"""The FastAPI app: routes, error shape, body limits, long-poll listener."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app.api import errors
from app.api.hot import HotJobs
from app.api.keycache import KeyCache
from app.api.limits import BodyLimit
from app.api.observe import RequestMetrics
from app.api.routes import batches, jobs, keys, schedules, system, tenants, webhooks
from app.api.waiters import Waiters
from app.broker.notify import async_redis_client
from app.config import Settings, get_settings
from app.console import install as install_console
from app.observe import tracing
from app.ops.memory import tune_gc
from app.store.db import AsyncPool

log = logging.getLogger(__name__)


def refuse_unsafe(settings: Settings) -> None:
    """In production, refuse to start with missing servers, placeholder secrets or test hooks."""
    problems = settings.production_problems("api")
    if problems:
        raise SystemExit("refusing to start the api in production: " + "; ".join(problems))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Listen for finished jobs while the app serves."""
    settings = get_settings()
    # Single submissions run in the event loop on these (app.jobs.submit_now).
    app.state.db_async = AsyncPool(settings.database_url or "", settings.db_pool_size,
                                   settings.db_pool_timeout) if settings.database_url else None
    app.state.redis_async = async_redis_client(settings.redis_url) if settings.redis_url \
        else None
    if settings.redis_url:
        app.state.waiters.start(settings.redis_url)
    yield
    await app.state.waiters.stop()
    if app.state.db_async is not None:
        await app.state.db_async.close()
    if app.state.redis_async is not None:
        await app.state.redis_async.aclose()


def create_app() -> FastAPI:
    """Build the api."""
    settings = get_settings()
    refuse_unsafe(settings)
    tracing.setup(settings, "babelq-api")
    # /docs and /redoc load Swagger UI and ReDoc from the installed package, not a CDN.
    app = FastAPIOffline(
        title="Babel Queue",
        version="1.0",
        summary="Durable encode, enumerate and evaluate jobs on Celery, Redis and PostgreSQL.",
        lifespan=lifespan,
    )
    app.state.keys = KeyCache(settings.key_cache_seconds)
    app.state.waiters = Waiters(on_key_revoked=app.state.keys.drop)
    errors.install(app)
    app.include_router(system.router)
    app.include_router(jobs.router)
    app.include_router(keys.router)
    app.include_router(batches.router)
    app.include_router(tenants.router)
    app.include_router(webhooks.router)
    app.include_router(schedules.router)
    install_console(app)
    app.add_middleware(HotJobs)  # innermost: inside the limits, metrics and tracing
    app.add_middleware(BodyLimit, default=settings.max_body_bytes,
                       overrides={"/v1/batches": settings.max_batch_body_bytes},
                       json={"/v1/batches": settings.max_json_batch_bytes})
    app.add_middleware(RequestMetrics)  # outermost: counts 413s and errors too
    tune_gc()  # start-up is done: freeze what it made
    return app


def __getattr__(name: str) -> Any:
    # `uvicorn app.api.main:app` works, without building an app at import for everyone else.
    if name == "app":
        return create_app()
    raise AttributeError(name)
