"""Periodic schedules: cron expressions that submit one job per fire time.

Fired by the relay (fire_due). Several relays may run: each takes due schedules with
FOR UPDATE SKIP LOCKED and moves next_fire_at on in the same transaction as the job it
submits, and the job's idempotency key names the schedule and the fire time, so one
fire time can never make two jobs. Missed fires (everything was down, or the schedule
was paused) follow one policy: the latest missed fire runs once, the older ones are
skipped, and the schedule carries on from now.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, croniter
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import get_settings
from app.jobs import admission
from app.jobs.refusals import AtCap
from app.jobs.submit import submit
from app.store.models import Schedule

log = logging.getLogger(__name__)

#: First half of the advisory lock key that serialises one tenant's schedule creations.
_SCHEDULES_LOCK = 0x7363


class BadSchedule(ValueError):
    """An invalid cron expression or time zone, or a name already used by the tenant."""


class TooManySchedules(Exception):
    """The tenant has max_schedules_per_tenant schedules already (409)."""


def zone(name: str) -> ZoneInfo:
    """The IANA time zone of that name, or BadSchedule."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadSchedule(f"unknown time zone {name!r}") from None


def next_fire(cron: str, tz: str, after: datetime) -> datetime:
    """The first fire time strictly after `after`, in UTC."""
    try:
        return croniter(cron, after.astimezone(zone(tz))).get_next(datetime).astimezone(UTC)
    except (CroniterBadCronError, ValueError, KeyError) as exc:
        raise BadSchedule(f"invalid cron expression {cron!r}: {exc}") from None


def last_fire(cron: str, tz: str, at: datetime) -> datetime:
    """The latest fire time at or before `at`, in UTC."""
    # Fire times are whole seconds: the latest one before the next second is at or before at.
    after = at.replace(microsecond=0) + timedelta(seconds=1)
    return croniter(cron, after.astimezone(zone(tz))).get_prev(datetime).astimezone(UTC)


def check(cron: str, tz: str) -> None:
    """BadSchedule unless cron (5 fields, or 6 with seconds last) and tz are valid."""
    if not croniter.is_valid(cron):
        raise BadSchedule(f"invalid cron expression {cron!r}")
    next_fire(cron, tz, datetime.now(UTC))


def create(session: Session, *, tenant_id: int, name: str, cron: str, timezone: str,
           job: dict[str, Any]) -> Schedule:
    """A new schedule of the tenant, first firing at the next matching time."""
    check(cron, timezone)
    _check_room(session, tenant_id)
    schedule = Schedule(tenant_id=tenant_id, name=name, cron=cron, timezone=timezone, job=job,
                        paused=False, next_fire_at=next_fire(cron, timezone, datetime.now(UTC)))
    session.add(schedule)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise BadSchedule(f"a schedule named {name!r} exists already") from None
    return schedule


def _check_room(session: Session, tenant_id: int) -> None:
    """TooManySchedules if the tenant has max_schedules_per_tenant already. Holds a
    per-tenant advisory lock until the transaction ends, so that concurrent creations
    cannot each see room for themselves."""
    cap = get_settings().max_schedules_per_tenant
    if cap <= 0:
        return
    admission.lock_tenant(session, _SCHEDULES_LOCK, tenant_id)
    have = session.scalar(select(func.count()).select_from(Schedule)
                          .where(Schedule.tenant_id == tenant_id)) or 0
    if have >= cap:
        raise TooManySchedules(f"tenant has {have} schedules, the most allowed "
                               f"(BABELQ_MAX_SCHEDULES_PER_TENANT = {cap}); delete one first")


def get_all(session: Session, *, tenant_id: int) -> Sequence[Schedule]:
    """The tenant's schedules, oldest first."""
    return session.scalars(select(Schedule).where(Schedule.tenant_id == tenant_id)
                           .order_by(Schedule.id)).all()


def get(session: Session, *, tenant_id: int, schedule_id: int) -> Schedule | None:
    """The tenant's schedule of that id (None for another tenant's)."""
    found = session.get(Schedule, schedule_id)
    return found if found is not None and found.tenant_id == tenant_id else None


def set_paused(session: Session, schedule: Schedule, paused: bool) -> None:
    """Pause, or resume from now: fires missed while paused are not made up."""
    if schedule.paused and not paused:
        schedule.next_fire_at = next_fire(schedule.cron, schedule.timezone, datetime.now(UTC))
    schedule.paused = paused


def remove(session: Session, schedule: Schedule) -> None:
    """Delete a schedule; the jobs it made stay."""
    session.execute(delete(Schedule).where(Schedule.id == schedule.id))


_DUE = text(
    "SELECT id, tenant_id, cron, timezone, job, next_fire_at FROM schedules "
    "WHERE NOT paused AND next_fire_at <= now() ORDER BY next_fire_at LIMIT :limit "
    "FOR UPDATE SKIP LOCKED"
)
_FIRED = text(
    "UPDATE schedules SET next_fire_at = :next, last_fire_at = :fired, last_job_id = :job "
    "WHERE id = :id"
)
_DEFERRED = text("UPDATE schedules SET next_fire_at = :next WHERE id = :id")


def fire_due(session: Session, *, actor: str, limit: int = 100) -> int:
    """Submit the job of every due schedule once, within its tenant's limits; returns how
    many fired."""
    rows = session.execute(_DUE, {"limit": limit}).all()
    now = datetime.now(UTC)
    fired_count = 0
    # Tenant by tenant: held_back takes a tenant's advisory lock until this transaction
    # ends, and two relays taking them in different orders could deadlock.
    for row in sorted(rows, key=lambda r: (r.tenant_id, r.next_fire_at)):
        upcoming = next_fire(row.cron, row.timezone, now)
        wait = held_back(session, row.tenant_id)
        if wait > 0:
            # Tried again after the wait (or at the next fire time, if sooner): then, as
            # for any missed fire, the latest fire time passed runs once.
            later = min(upcoming, now + timedelta(seconds=wait))
            session.execute(_DEFERRED, {"id": row.id, "next": later})
            log.info("schedule %s of tenant %s held back %.1f s by the tenant's limits",
                     row.id, row.tenant_id, wait)
            continue
        fired = max(row.next_fire_at, last_fire(row.cron, row.timezone, now))
        spec = row.job
        job, _ = submit(
            session, tenant_id=row.tenant_id, kind=spec["kind"], params=spec.get("params", {}),
            actor=f"{actor} schedule {row.id}", priority=spec.get("priority", "normal"),
            max_attempts=spec.get("max_attempts"), ref=spec.get("ref"),
            idempotency_key=fire_key(row.id, fired))
        session.execute(_FIRED, {"id": row.id, "fired": fired, "job": job.id,
                                 "next": upcoming})
        fired_count += 1
    return fired_count


def held_back(session: Session, tenant_id: int) -> float:
    """Seconds until the tenant's limits let one more job in; 0 if they do now, its token
    then taken. A scheduled job counts against the tenant's cap and rate as any other:
    schedules firing every second must not be a way around them."""
    try:
        admission.check_cap(session, tenant_id, 1)
    except AtCap as exc:
        return float(exc.retry_after or admission.CAP_RETRY_AFTER)
    return admission.take_tokens(tenant_id, 1)


def fire_key(schedule_id: int, fired: datetime) -> str:
    """The idempotency key of a schedule's job for one fire time: unique per tenant."""
    return f"schedule:{schedule_id}:{fired.astimezone(UTC).isoformat()}"
