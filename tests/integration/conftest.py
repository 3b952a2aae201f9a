"""Integration fixtures: the real api in-process, a real Celery worker thread, the relay."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from fastapi.testclient import TestClient

from app.config import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def celery_app(settings: Settings) -> Any:
    """The production Celery app, pointed at the test Redis."""
    from app.broker.celery_app import configure

    return configure(settings)


@pytest.fixture(scope="session")
def worker(celery_app: Any) -> Iterator[Any]:
    """A real Celery worker consuming all three queues, in a thread (celery's test worker)."""
    import workers.tasks  # noqa: F401  (registers the task)

    with start_worker(
        celery_app,
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        queues=["encode", "enumerate", "evaluate"],
        loglevel="WARNING",
        shutdown_timeout=30,
    ) as w:
        yield w


@pytest.fixture(scope="session")
def relay(settings: Settings, celery_app: Any) -> Iterator[threading.Event]:
    """The relay loop in a thread (it publishes with the configured Celery app)."""
    from workers import relay as relay_mod

    stop = threading.Event()
    thread = threading.Thread(target=relay_mod.run, args=(stop,), daemon=True)
    thread.start()
    yield stop
    stop.set()
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def api(settings: Settings) -> Iterator[TestClient]:
    """The FastAPI app over its ASGI interface, lifespan included."""
    from app.api.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield client


def make_key(tenant: str, admin: bool = False) -> str:
    from app.jobs.keys import create_key
    from app.store.db import session_scope

    with session_scope() as session:
        _, secret = create_key(session, tenant=tenant, admin=admin)
    return secret


@pytest.fixture(scope="session")
def admin_key(settings: Settings) -> str:
    """An admin key of tenant "ops"."""
    return make_key("ops", admin=True)


@pytest.fixture(scope="session")
def key_a(settings: Settings) -> str:
    """A key of tenant "alpha"."""
    return make_key("alpha")


@pytest.fixture(scope="session")
def key_b(settings: Settings) -> str:
    """A key of tenant "beta"."""
    return make_key("beta")


def auth(key: str) -> dict[str, str]:
    """The Authorization header of a key."""
    return {"Authorization": f"Bearer {key}"}
