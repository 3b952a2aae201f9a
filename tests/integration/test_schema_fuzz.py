"""Schemathesis over the api's own OpenAPI schema: no 5xx, and every response fits the schema.

Runs in-process over ASGI against the real PostgreSQL and Redis, with a key of a tenant of
its own (and an admin key for /v1/keys), a bounded number of examples per operation and
generation mode, hypothesis derandomised: a run is repeatable and takes well under a minute.

Each operation's cases are drawn with hypothesis directly (`operation.as_strategy`):
schemathesis' own pytest plugin does not run under pytest 9 (it sets `node._nodeid`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select

from app.config import Settings
from app.jobs.keys import create_key
from app.store.db import session_scope
from app.store.models import ApiKey
from tests.integration.conftest import auth

pytestmark = pytest.mark.integration

#: Examples per operation and generation mode (positive, negative).
MAX_EXAMPLES = 25

#: Longest long-poll a generated GET /v1/jobs/{id}?wait=S may block for.
MAX_WAIT = 0.5

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection]


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else str(value).encode()


def _new_key(tenant: str, admin: bool = False) -> tuple[int, str]:
    with session_scope() as s:
        row, secret = create_key(s, tenant=tenant, admin=admin)
        return row.id, secret


class Fuzzer:
    """Sends generated cases to the app with the right key, keeping them harmless."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.tenant_key = _new_key("fuzz")[1]
        self.admin_key = _new_key("fuzz-ops", admin=True)[1]
        with session_scope() as s:
            # Keys the rest of the suite (and this run) authenticates with: never revoked here.
            self.protected = set(s.scalars(select(ApiKey.id)))
        self.ran: Counter[str] = Counter()

    def tame(self, case: Any) -> None:
        """Keep generated values valid but harmless: short long-polls, no revoking keys in use."""
        wait = case.query.get("wait") if isinstance(case.query, dict) else None
        if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > MAX_WAIT:
            case.query["wait"] = MAX_WAIT
        key_id = (case.path_parameters or {}).get("key_id")
        if case.method == "DELETE" and isinstance(key_id, int) and key_id in self.protected:
            case.path_parameters["key_id"] = _new_key("fuzz-throwaway")[0]

    def send(self, case: Any) -> None:
        """Call the app and run every check on the response."""
        self.tame(case)
        key = self.admin_key if case.path.startswith("/v1/keys") else self.tenant_key
        self.ran[case.operation.label] += 1
        case.call_and_validate(app=self.app, headers=auth(key), checks=CHECKS)

    def run(self, operation: Any, mode: GenerationMode) -> None:
        """MAX_EXAMPLES derandomised cases of one operation in one mode."""

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def each(case: Any) -> None:
            self.send(case)

        each()


def test_api_conforms_to_its_schema(settings: Settings) -> None:
    from app.api.main import create_app

    app = create_app()
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    fuzzer = Fuzzer(app)
    failures: list[str] = []
    results = list(schema.get_all_operations())
    assert all(isinstance(r, Ok) for r in results), "the served schema does not load"
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert len(operations) >= 17, "the served schema lost operations"
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzzer.run(operation, mode)
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # no input of it can be made invalid
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    total = sum(fuzzer.ran.values())
    print(f"\nschemathesis: {total} cases over {len(operations)} operations")
    assert not failures, "\n\n".join(failures)
    assert set(fuzzer.ran) == {op.label for op in operations}
