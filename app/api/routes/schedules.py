"""Periodic schedules of the caller's tenant: cron expressions that submit jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from app import jobs
from app.api.deps import IdPath, PrincipalDep, SessionDep
from app.api.errors import ApiError
from app.api.routes.jobs import ERRORS
from app.api.schemas import KIND_MAX, Label, Priority
from app.jobs import schedules
from app.jobs.keys import Principal
from app.store.models import Schedule

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])


class ScheduledJob(BaseModel):
    """The job each fire submits (as the body of POST /v1/jobs, without delay or key)."""

    model_config = ConfigDict(extra="forbid")
    kind: str = Field(max_length=KIND_MAX)
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = "normal"
    max_attempts: int | None = Field(default=None, ge=1, le=20)
    ref: Label | None = None


class ScheduleCreate(BaseModel):
    """A schedule to create."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    cron: str = Field(max_length=200, description="5 fields, or 6 with seconds last")
    timezone: str = Field("UTC", max_length=64, description="IANA name, e.g. Europe/Paris")
    job: ScheduledJob


class ScheduleRead(BaseModel):
    """A schedule and when it fires next."""

    id: int
    name: str
    cron: str
    timezone: str
    job: dict[str, Any]
    paused: bool
    next_fire_at: datetime | None
    last_fire_at: datetime | None
    last_job_id: int | None
    created_at: datetime

    @classmethod
    def of(cls, s: Schedule) -> ScheduleRead:
        """From its row (next_fire_at is None while paused)."""
        return cls(id=s.id, name=s.name, cron=s.cron, timezone=s.timezone, job=s.job,
                   paused=s.paused, next_fire_at=None if s.paused else s.next_fire_at,
                   last_fire_at=s.last_fire_at, last_job_id=s.last_job_id,
                   created_at=s.created_at)


class SchedulesRead(BaseModel):
    """The tenant's schedules."""

    data: list[ScheduleRead]
    count: int


def _schedule(session: Session, principal: Principal, schedule_id: int) -> Schedule:
    found = schedules.get(session, tenant_id=principal.tenant_id, schedule_id=schedule_id)
    if found is None:
        raise ApiError(404, f"schedule {schedule_id} not found")
    return found


@router.post("", status_code=201, response_model=ScheduleRead, responses=ERRORS)
def create_schedule(body: ScheduleCreate, session: SessionDep,
                    principal: PrincipalDep) -> ScheduleRead:
    """Create a schedule; it first fires at the next time its cron expression matches."""
    try:
        params = jobs.validate(body.job.kind, body.job.params)
        spec = {**body.job.model_dump(exclude_none=True), "params": params}
        row = schedules.create(session, tenant_id=principal.tenant_id, name=body.name,
                               cron=body.cron, timezone=body.timezone, job=spec)
    except jobs.UnknownKind as exc:
        raise ApiError(422, str(exc), [{"field": "job.kind", "message": str(exc)}]) from None
    except schedules.BadSchedule as exc:
        raise ApiError(422, str(exc)) from None
    except schedules.TooManySchedules as exc:
        raise ApiError(409, str(exc)) from None
    session.commit()
    return ScheduleRead.of(row)


@router.get("", response_model=SchedulesRead, responses=ERRORS)
def read_schedules(session: SessionDep, principal: PrincipalDep) -> SchedulesRead:
    """The tenant's schedules."""
    data = [ScheduleRead.of(s) for s in schedules.get_all(session, tenant_id=principal.tenant_id)]
    return SchedulesRead(data=data, count=len(data))


@router.get("/{schedule_id}", response_model=ScheduleRead, responses=ERRORS)
def read_schedule(schedule_id: IdPath, session: SessionDep,
                  principal: PrincipalDep) -> ScheduleRead:
    """One schedule."""
    return ScheduleRead.of(_schedule(session, principal, schedule_id))


def _pause(session: Session, principal: Principal, schedule_id: int, paused: bool
           ) -> ScheduleRead:
    row = _schedule(session, principal, schedule_id)
    schedules.set_paused(session, row, paused)
    session.commit()
    return ScheduleRead.of(row)


@router.post("/{schedule_id}/pause", response_model=ScheduleRead, responses=ERRORS)
def pause_schedule(schedule_id: IdPath, session: SessionDep,
                   principal: PrincipalDep) -> ScheduleRead:
    """Stop firing until resumed."""
    return _pause(session, principal, schedule_id, True)


@router.post("/{schedule_id}/resume", response_model=ScheduleRead, responses=ERRORS)
def resume_schedule(schedule_id: IdPath, session: SessionDep,
                    principal: PrincipalDep) -> ScheduleRead:
    """Fire again from the next matching time; fires missed while paused are skipped."""
    return _pause(session, principal, schedule_id, False)


@router.delete("/{schedule_id}", status_code=204, responses=ERRORS)
def delete_schedule(schedule_id: IdPath, session: SessionDep, principal: PrincipalDep) -> None:
    """Delete a schedule; the jobs it submitted stay."""
    schedules.remove(session, _schedule(session, principal, schedule_id))
    session.commit()
