"""Test-only job kinds, for fault tests: never accepted unless BABELQ_TEST_HOOKS is on.

`test_fail` always raises (a poison job); `test_sleep` sleeps, to hold a worker
mid-job while a test kills or stops it. Production refuses to start with hooks on.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.config import get_settings

TEST_KINDS = ("test_fail", "test_sleep")


class FailParams(BaseModel):
    """Params of test_fail."""

    model_config = ConfigDict(extra="forbid", strict=True)
    message: str = Field(default="poison", max_length=200)


class SleepParams(BaseModel):
    """Params of test_sleep."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    seconds: float = Field(ge=0, le=600)


class PoisonError(RuntimeError):
    """What a test_fail job raises, every time."""


MODELS: dict[str, type[BaseModel]] = {"test_fail": FailParams, "test_sleep": SleepParams}


def enabled() -> bool:
    """Whether test kinds are accepted and run in this process."""
    return get_settings().test_hooks


def validate(kind: str, params: Any) -> dict[str, Any]:
    """Validated params of a test kind."""
    return MODELS[kind].model_validate(params).model_dump()


def run(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run a test kind."""
    if kind == "test_fail":
        raise PoisonError(FailParams.model_validate(params).message)
    seconds = SleepParams.model_validate(params).seconds
    time.sleep(seconds)
    return {"slept": seconds}
