"""The delivery store for senders: claim due deliveries, build their bodies, record attempts.

Claims are leased (next_attempt_at moves webhook_lease_seconds ahead), taken with
FOR UPDATE SKIP LOCKED: several senders never send one delivery at once, and one that
dies mid-flight leaves its deliveries to be taken again when the lease runs out. An
attempt's outcome is written only if the delivery is still on the attempt it was taken
at (fencing), so a late sender cannot record twice.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.config import get_settings
from app.jobs import metrics
from app.jobs.documents import JobRead, batch_read
from app.store.models import Batch
from app.webhooks import secrets

log = logging.getLogger(__name__)

#: The job columns of a body (GET /v1/jobs/{id}); the result comes from results.
_JOB_COLUMNS = [c for c in JobRead.model_fields if c not in ("id", "result", "result_sha256")]


class _JobRow:
    """A claimed row's job columns (j_*), as JobRead.of reads them."""

    __slots__ = ("row",)

    def __init__(self, row: Any) -> None:
        self.row = row

    def __getattr__(self, name: str) -> Any:
        return getattr(self.row, f"j_{name}")


@dataclass(slots=True)
class Due:
    """A claimed delivery, with its body."""

    id: int
    endpoint_id: int
    event: str
    attempts: int
    body: bytes
    #: the body when it was built for this attempt (kept if the attempt fails), else None
    fresh: dict[str, Any] | None


@dataclass(slots=True)
class Target:
    """Where and with what secret an endpoint's deliveries are sent."""

    url: str
    secret: str


@dataclass(slots=True)
class Attempt:
    """What one send gave."""

    delivery: Due
    at: datetime
    ms: float
    status_code: int | None = None
    error: str | None = None
    response: str = ""

    @property
    def ok(self) -> bool:
        """2xx: delivered. Anything else, redirects included, is retried."""
        return self.status_code is not None and 200 <= self.status_code < 300


#: Claims due deliveries and returns each with its endpoint and, when its body is still to
#: build, its job and result: one round trip (three cost the sender most of its time).
_CLAIM = text(
    "WITH due AS (UPDATE webhook_deliveries d "
    "SET next_attempt_at = now() + make_interval(secs => :lease), "
    "retry_until = coalesce(d.retry_until, now() + make_interval(secs => :retry_for)) "
    "FROM (SELECT id FROM webhook_deliveries WHERE status = 'pending' "
    "AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT :limit "
    "FOR UPDATE SKIP LOCKED) AS due WHERE d.id = due.id "
    "RETURNING d.id, d.endpoint_id, d.event, d.job_id, d.batch_id, d.attempts, d.payload, "
    "d.created_at) "
    "SELECT due.*, e.url, e.secret, j.id AS j_id, "
    f"{', '.join(f'j.{c} AS j_{c}' for c in _JOB_COLUMNS)}, "
    "r.result AS j_result, r.result_sha256 AS j_result_sha256 "
    "FROM due LEFT JOIN webhook_endpoints e ON e.id = due.endpoint_id "
    "LEFT JOIN jobs j ON j.id = due.job_id AND due.payload IS NULL "
    "LEFT JOIN results r ON r.job_id = j.id"
)


def claim_due(session: Session, limit: int) -> tuple[list[Due], dict[int, Target]]:
    """Take up to limit due deliveries for one lease, with their endpoints."""
    s = get_settings()
    rows = session.execute(_CLAIM, {"lease": s.webhook_lease_seconds, "limit": limit,
                                    "retry_for": s.webhook_retry_for}).all()
    if not rows:
        return [], {}
    targets: dict[int, Target] = {}
    for e in {r.endpoint_id: r for r in rows if r.url is not None}.values():
        if (t := _target(e.url, e.secret, s.webhook_secret_key)) is not None:
            targets[e.endpoint_id] = t
    jobs = _job_bodies([r for r in rows if r.j_id is not None])
    batches = _batch_bodies(session, [r.batch_id for r in rows
                                      if r.payload is None and r.batch_id])
    due = []
    for r in rows:
        fresh = None
        payload = r.payload
        if payload is None:
            data = jobs.get(r.job_id) if r.job_id else batches.get(r.batch_id)
            ident = {"id": r.job_id or r.batch_id}
            payload = fresh = {"type": r.event, "timestamp": r.created_at.isoformat(),
                               "data": data or ident}
        due.append(Due(r.id, r.endpoint_id, r.event, r.attempts, orjson.dumps(payload), fresh))
    return due, targets


def _target(url: str, sealed: str, key: str | None) -> Target | None:
    """An endpoint's target, or None (logged) when its secret cannot be opened."""
    try:
        return Target(url, secrets.unseal(sealed, key))
    except (secrets.SecretKeyMissing, InvalidTag, ValueError) as exc:
        log.warning("webhook endpoint secret cannot be opened (%s): is "
                    "BABELQ_WEBHOOK_SECRET_KEY the one it was sealed with?", type(exc).__name__)
        return None


def _job_bodies(rows: list[Any]) -> dict[int, dict[str, Any]]:
    """Each claimed row's job as GET /v1/jobs/{id} returns it."""
    return {r.j_id: JobRead.of(_JobRow(r), *((r.j_result, r.j_result_sha256)
                                            if r.j_status == "succeeded" else (None, None))
                               ).model_dump(mode="json")
            for r in rows}


def _batch_bodies(session: Session, ids: list[int]) -> dict[int, dict[str, Any]]:
    """Each batch as GET /v1/batches/{id} returns it."""
    if not ids:
        return {}
    return {b.id: batch_read(b).model_dump(mode="json")
            for b in session.query(Batch).filter(Batch.id.in_(ids))}


def backoff(attempt: int) -> float:
    """Seconds before retry number `attempt`: exponential, capped, with equal jitter."""
    s = get_settings()
    ceiling = min(s.webhook_backoff_max, s.webhook_backoff_base * 2 ** max(0, attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


_RECORD = text(
    "UPDATE webhook_deliveries d SET attempts = d.attempts + 1, response = v.response, "
    "history = jsonb_path_query_array(d.history || jsonb_build_array(v.entry), "
    "CAST(:keep AS jsonpath)), payload = coalesce(d.payload, v.payload), "
    "status = CASE WHEN v.ok THEN 'delivered' "
    "WHEN now() + make_interval(secs => v.wait) > d.retry_until THEN 'failed' "
    "ELSE 'pending' END, "
    "next_attempt_at = CASE WHEN v.ok THEN d.next_attempt_at "
    "ELSE now() + make_interval(secs => v.wait) END, "
    "finished_at = CASE WHEN v.ok OR now() + make_interval(secs => v.wait) > d.retry_until "
    "THEN now() END "
    "FROM unnest(CAST(:ids AS bigint[]), CAST(:before AS int[]), CAST(:oks AS bool[]), "
    "CAST(:entries AS jsonb[]), CAST(:responses AS text[]), CAST(:payloads AS jsonb[]), "
    "CAST(:waits AS float8[])) AS v(id, before, ok, entry, response, payload, wait) "
    "WHERE d.id = v.id AND d.status = 'pending' AND d.attempts = v.before"
)


def record(session: Session, attempts: Sequence[Attempt]) -> int:
    """Write the outcome of each attempt; returns how many were delivered."""
    if not attempts:
        return 0
    keep = get_settings().webhook_history
    session.execute(_RECORD, {
        "keep": f"$[last - {keep - 1} to last]" if keep > 1 else "$[last]",
        "ids": [a.delivery.id for a in attempts],
        "before": [a.delivery.attempts for a in attempts],
        "oks": [a.ok for a in attempts],
        "entries": [orjson.dumps({"at": a.at.isoformat(), "status_code": a.status_code,
                                  "error": a.error, "ms": round(a.ms, 1)}).decode()
                    for a in attempts],
        "responses": [a.response for a in attempts],
        # Kept only for a retry to send the same body: a delivered one needs none.
        "payloads": [orjson.dumps(a.delivery.fresh).decode()
                     if a.delivery.fresh and not a.ok else None for a in attempts],
        "waits": [0.0 if a.ok else backoff(a.delivery.attempts + 1) for a in attempts],
    })
    metrics.delivered(session, attempts)
    return sum(a.ok for a in attempts)

