"""Console logins: an opaque cookie, stored server-side as its sha256, tied to an API key.

Every request looks its session and key up in one statement, so logging out, the
session's expiry and revoking the key all end it at once, on every api process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg

from app.jobs.keys import Principal
from app.store.db import conn_rows

#: How long a console login lasts; the key's revocation ends it sooner.
SESSION_LIFETIME = timedelta(hours=8)

_CREATE = ("INSERT INTO console_sessions (token_hash, key_id, expires_at) "
           "VALUES (%s, %s, now() + %s)")
#: Logins past their time go when someone logs in: the table stays as small as its users.
_PURGE = "DELETE FROM console_sessions WHERE expires_at < now()"
_LIVE = ("SELECT k.id, k.tenant_id, k.is_admin, t.name FROM console_sessions s "
         "JOIN api_keys k ON k.id = s.key_id JOIN tenants t ON t.id = k.tenant_id "
         "WHERE s.token_hash = %s AND s.expires_at > now() AND k.revoked_at IS NULL")
_END = "DELETE FROM console_sessions WHERE token_hash = %s"


@dataclass(frozen=True, slots=True)
class Login:
    """A live console login: who it acts as, and its CSRF token."""

    principal: Principal
    csrf: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(token: str) -> str:
    """The session's CSRF token: derived from its secret cookie, so a page can show it
    and another site, which never sees the cookie, cannot forge it."""
    return hmac.new(token.encode(), b"babelq-console-csrf", hashlib.sha256).hexdigest()


def start(conn: psycopg.Connection[Any], principal: Principal) -> str:
    """A new login for this key's principal; returns the cookie's secret value."""
    token = secrets.token_urlsafe(32)
    conn.execute(_PURGE)
    conn.execute(_CREATE, (_digest(token), principal.key_id, SESSION_LIFETIME))
    return token


def lookup(conn: psycopg.Connection[Any], token: str) -> Login | None:
    """The live login of this cookie value, or None (unknown, expired, or its key revoked)."""
    rows = conn_rows(conn, _LIVE, (_digest(token),))
    if not rows:
        return None
    row = rows[0]
    return Login(Principal(row.id, row.tenant_id, row.name, row.is_admin), csrf_token(token))


def end(conn: psycopg.Connection[Any], token: str) -> None:
    """Log out: the cookie is worthless from now on, wherever it is."""
    conn.execute(_END, (_digest(token),))
