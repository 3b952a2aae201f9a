"""Test-only job kinds, for fault tests: a plugin (app/jobs/kinds.py), never in production.

`test_fail` always raises (a poison job); `test_sleep` sleeps, to hold a worker
mid-job while a test kills or stops it. Registered in the pytest process by
tests/conftest.py (`pytest_plugins`), and in the api, worker and relay processes a
test starts by BABELQ_PLUGINS=tests.plugins.testkinds (see ENV); production refuses
to start with plugins set.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.jobs import kinds

TEST_KINDS = ("test_fail", "test_sleep")
#: What a process started by a test needs to know the test kinds: the plugin, and the
#: repository root on its path (the `babelq` script's own path does not hold `tests`).
ENV = {"BABELQ_PLUGINS": __name__, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


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


def fail(params: dict[str, Any]) -> dict[str, Any]:
    """Run test_fail: raise, always."""
    raise PoisonError(FailParams.model_validate(params).message)


def sleep(params: dict[str, Any]) -> dict[str, Any]:
    """Run test_sleep."""
    seconds = SleepParams.model_validate(params).seconds
    time.sleep(seconds)
    return {"slept": seconds}


kinds.register("test_fail", validate=lambda p: FailParams.model_validate(p).model_dump(),
               run=fail)
kinds.register("test_sleep", validate=lambda p: SleepParams.model_validate(p).model_dump(),
               run=sleep)
