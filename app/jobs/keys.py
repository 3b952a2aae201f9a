"""Tenants and API keys: keys are shown once, stored as sha256, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.store.db import conn_rows, driver
from app.store.models import ApiKey, Tenant

#: Every key starts with this, so leaked keys are easy to recognise and scan for.
KEY_PREFIX = "bq_"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's id, its tenant, and whether it is an admin key."""

    key_id: int
    tenant_id: int
    tenant: str
    is_admin: bool

    @property
    def actor(self) -> str:
        """How this caller is named in audit events."""
        return f"key:{self.key_id}"


def hash_key(key: str) -> str:
    """The stored form of a key. Keys are 256-bit random, so a plain sha256 suffices."""
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_tenant(session: Session, name: str) -> Tenant:
    """The tenant with this name, created if missing."""
    session.execute(insert(Tenant).values(name=name).on_conflict_do_nothing())
    return session.scalars(select(Tenant).where(Tenant.name == name)).one()


def create_key(
    session: Session, *, tenant: str, admin: bool = False, name: str = ""
) -> tuple[ApiKey, str]:
    """A new key for the tenant; the secret is returned here and never again."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        tenant_id=ensure_tenant(session, tenant).id,
        name=name,
        prefix=secret[:10],
        key_hash=hash_key(secret),
        is_admin=admin,
    )
    session.add(row)
    session.flush()
    return row, secret


#: A live key and its tenant, by the key's hash (an index seek).
_LIVE_KEY = ("SELECT k.id, k.tenant_id, k.is_admin, k.key_hash, t.name FROM api_keys k "
             "JOIN tenants t ON t.id = k.tenant_id WHERE k.key_hash = %s AND k.revoked_at IS NULL")


def authenticate(db: Session | psycopg.Connection[Any], key: str) -> Principal | None:
    """The principal of a live key, or None.

    db is a session, or (the api, on every request) a connection of driver_autocommit.
    The stored hash is compared again with hmac.compare_digest so the check itself takes
    the same time for any near miss.
    """
    digest = hash_key(key)
    conn = db if isinstance(db, psycopg.Connection) else driver(db)
    rows = conn_rows(conn, _LIVE_KEY, (digest,))
    if not rows or not hmac.compare_digest(rows[0].key_hash, digest):
        return None
    row = rows[0]
    return Principal(row.id, row.tenant_id, row.name, row.is_admin)


def list_keys(session: Session, tenant: str | None = None) -> list[tuple[ApiKey, str]]:
    """Keys (never their secrets) with their tenant names."""
    stmt = select(ApiKey, Tenant.name).join(Tenant).order_by(ApiKey.id)
    if tenant is not None:
        stmt = stmt.where(Tenant.name == tenant)
    return [(k, t) for k, t in session.execute(stmt).all()]


def revoke_key(session: Session, key_id: int) -> bool:
    """Revoke a key at once; False if there was no live key with that id."""
    result = session.execute(
        text("UPDATE api_keys SET revoked_at = now() WHERE id = :id AND revoked_at IS NULL"),
        {"id": key_id},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
