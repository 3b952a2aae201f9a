"""What a producer submits for one job (a POST /v1/jobs body, a line of a batch), and
how its validation errors read. Shared by the api and ingestion."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.core.params import storable

Priority = Literal["high", "normal", "low"]
#: Longest kind name a job may be submitted with (the known ones are shorter).
KIND_MAX = 64


#: Free-text fields of requests (refs, names, idempotency keys): bounded and storable.
Label = Annotated[str, Field(max_length=200), AfterValidator(storable)]
IdempotencyKey = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(storable)]


class JobCreate(BaseModel):
    """One job to submit."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="encode, enumerate or evaluate", max_length=KIND_MAX)
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = "normal"
    max_attempts: int | None = Field(default=None, ge=1, le=20)
    idempotency_key: IdempotencyKey | None = None
    ref: Label | None = None
    run_at: datetime | None = Field(
        default=None, description="ISO 8601 time with zone: the job starts no earlier")
    delay: float | None = Field(default=None, ge=0, description="seconds: the same, from now")


def field_errors(errors: Any, prefix: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Pydantic errors as [{"field": "params.text", "message": ...}], JSON-safe."""
    out = []
    for e in errors:
        loc = [*prefix, *e.get("loc", ())]
        if loc and loc[0] == "body":
            loc = loc[1:]
        out.append({"field": ".".join(str(p) for p in loc), "message": e.get("msg", ""),
                    "type": e.get("type", "")})
    return out
