"""Request dependencies: a database session and the calling principal."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.api.errors import ApiError
from app.api.keycache import KeyCache
from app.jobs.keys import Principal, authenticate, hash_key
from app.store.db import driver_autocommit, new_session

log = logging.getLogger(__name__)


async def get_db() -> AsyncIterator[Session]:
    """One session per request; the route commits what it means to keep.

    Async, so FastAPI does not send it to the threadpool twice: making a session does
    no I/O, and closing one does only while it still holds a transaction.
    """
    session = new_session()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


SessionDep = Annotated[Session, Depends(get_db)]

#: Largest id a row can have (PostgreSQL bigint); larger ones are refused with 422, not sent.
MAX_ID = 2**63 - 1

#: A job, batch or key id in a path.
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing API key: send Authorization: Bearer <key>",
                       headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


#: Keys being looked up again ahead of their deadline (KeyCache.due), by key hash (no
#: raw key kept where it need not be): one lookup each.
_refreshing: dict[str, asyncio.Task[None]] = {}


async def _refresh(cache: KeyCache, token: str, digest: str) -> None:
    try:
        principal = await run_in_threadpool(_lookup, token)
    except Exception as exc:  # the kept entry stands until its deadline
        log.debug("key not looked up again ahead of time: %s", type(exc).__name__)
        return
    finally:
        _refreshing.pop(digest, None)
    if principal is None:
        cache.forget(token)
    else:
        cache.put(token, principal)


async def get_principal(request: Request) -> Principal:
    """The live key's principal, or 401: from the key cache, else one statement in autocommit."""
    token = _bearer(request)
    cache: KeyCache = request.app.state.keys
    principal = cache.get(token)
    if principal is not None and cache.due(token):
        digest = hash_key(token)
        if digest not in _refreshing:
            _refreshing[digest] = asyncio.create_task(_refresh(cache, token, digest))
    if principal is None:
        principal = await run_in_threadpool(_lookup, token)
        if principal is None:
            raise ApiError(401, "invalid or revoked API key",
                           headers={"WWW-Authenticate": "Bearer"})
        cache.put(token, principal)
    return principal


def _lookup(token: str) -> Principal | None:
    with driver_autocommit() as conn:
        return authenticate(conn, token)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_admin(principal: PrincipalDep) -> Principal:
    """Only admin keys pass."""
    if not principal.is_admin:
        raise ApiError(403, "this needs an admin key")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]
