"""The audit trail is append-only in the database, and an edit behind its back is found."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app import core, jobs
from app.jobs.keys import ensure_tenant
from app.ops.embedded import create_database, drop_database
from app.store.db import migrate, normalize_url
from tests.faults import checks
from tests.faults.stack import BABELQ, ROOT, Servers, babelq_env, sql_count

pytestmark = pytest.mark.faults

ACTOR = "tamper-test"


@pytest.fixture
def tamper_db(servers: Servers) -> Iterator[tuple[str, Engine]]:
    """A database of its own: this test breaks chains on purpose."""
    url = create_database(servers.pg_url, "babelq_tamper")
    migrate(url)
    engine = create_engine(normalize_url(url))
    try:
        yield url, engine
    finally:
        engine.dispose()
        drop_database(servers.pg_url, "babelq_tamper")


def finished_jobs(engine: Engine, n: int) -> list[int]:
    """n encode jobs run to success through app.jobs: submitted, started, succeeded."""
    with Session(engine) as session:
        tenant = ensure_tenant(session, "tamper")
        batch_id = session.execute(text("INSERT INTO batches (tenant_id, total, queued) "
                                        "VALUES (:t, :n, :n) RETURNING id"),
                                   {"t": tenant.id, "n": n}).scalar_one()
        rows = [jobs.NewJob(i + 1, "encode", core.validate("encode", {"text": f"page {i}"}), 1, 3)
                for i in range(n)]
        block = jobs.prepare_rows(rows, jobs.reserve_ids(session, n), tenant_id=tenant.id,
                                  batch_id=batch_id, actor=ACTOR, now=datetime.now(UTC))
        inserted, _ = jobs.store_rows(session, block, tenant_id=tenant.id, batch_id=batch_id)
        _, locked = jobs.lock_queued(session, [i for _, i in inserted], worker=ACTOR,
                                     inline_ok=False)
        held = jobs.claim(session, locked, worker=ACTOR)
        jobs.finish(session, [jobs.Outcome(c, result=core.run(c.kind, c.params))
                              for c in locked], worker=ACTOR, held=held)
        session.commit()
    return [i for _, i in inserted]


def audit_verify(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`babelq audit verify ... --json` against the tamper database."""
    return subprocess.run([BABELQ, "audit", "verify", *args, "--json"], cwd=ROOT, text=True,
                          capture_output=True, env=babelq_env(database_url=url), timeout=60,
                          check=False)


def test_database_refuses_to_change_audit_events(tamper_db: tuple[str, Engine]) -> None:
    _, engine = tamper_db
    job = finished_jobs(engine, 1)[0]
    for statement in (f"UPDATE audit_events SET actor = 'mallory' WHERE job_id = {job}",
                      f"DELETE FROM audit_events WHERE job_id = {job} AND seq = 3",
                      "TRUNCATE audit_events"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    assert checks.verify_all_chains(engine) == []
    assert checks.assert_consistent(engine, 0) == {"succeeded": 1}


def test_edited_event_is_found_by_audit_verify(tamper_db: tuple[str, Engine]) -> None:
    url, engine = tamper_db
    ids = finished_jobs(engine, 3)
    clean = audit_verify(url, "--all")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["chains"] == 3

    victim = ids[1]
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER audit_events_append_only ON audit_events"))
        conn.execute(text("UPDATE audit_events SET details = details || '{\"attempt\": 0}' "
                          "WHERE job_id = :j AND seq = 2"), {"j": victim})

    broken = checks.verify_all_chains(engine)
    assert [(r.job_id, r.broken_seq) for r in broken] == [(victim, 2)]
    found = audit_verify(url, "--all")
    assert found.returncode == 1, found.stdout + found.stderr
    report = json.loads(found.stdout)
    assert not report["ok"]
    assert [(b["job_id"], b["broken_seq"]) for b in report["broken"]] == [(victim, 2)]
    assert audit_verify(url, str(victim)).returncode == 1
    assert audit_verify(url, str(ids[0])).returncode == 0

    with engine.begin() as conn:  # the newest event of a chain removed: its row head says so
        conn.execute(text("DELETE FROM audit_events WHERE job_id = :j AND seq = 3"),
                     {"j": ids[2]})
    truncated = audit_verify(url, str(ids[2]))
    assert truncated.returncode == 1
    assert json.loads(truncated.stdout)["broken"][0]["reason"] == "chain was truncated"


def test_truncated_chain_is_found_by_audit_verify_all(tamper_db: tuple[str, Engine]) -> None:
    url, engine = tamper_db
    victim = finished_jobs(engine, 2)[0]
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER audit_events_append_only ON audit_events"))
        conn.execute(text("DELETE FROM audit_events WHERE job_id = :j AND seq = 3"),
                     {"j": victim})
    found = audit_verify(url, "--all")
    assert found.returncode == 1, found.stdout + found.stderr
    broken = json.loads(found.stdout)["broken"]
    assert [(b["job_id"], b["broken_seq"], b["reason"]) for b in broken] == [
        (victim, 2, "chain was truncated")]


def test_a_chain_deleted_whole_is_found(tamper_db: tuple[str, Engine]) -> None:
    # Zero events is not an intact chain when the job's row records a head.
    url, engine = tamper_db
    kept, victim = finished_jobs(engine, 2)
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER audit_events_append_only ON audit_events"))
        conn.execute(text("DELETE FROM audit_events WHERE job_id = :j"), {"j": victim})
    one = audit_verify(url, str(victim))
    assert one.returncode == 1, one.stdout + one.stderr
    assert json.loads(one.stdout)["broken"] == [
        {"job_id": victim, "broken_seq": 1, "reason": "chain is missing (3 events recorded)"}]
    every = audit_verify(url, "--all")
    assert every.returncode == 1, every.stdout + every.stderr
    assert [(b["job_id"], b["reason"]) for b in json.loads(every.stdout)["broken"]] == [
        (victim, "chain is missing (3 events recorded)")]
    assert audit_verify(url, str(kept)).returncode == 0


@pytest.fixture
def app_role(tamper_db: tuple[str, Engine]) -> Iterator[Engine]:
    """An engine of an ordinary role: it may read and write every table, owns none."""
    url, engine = tamper_db
    role = "babelq_app_tamper"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public "
                          f"TO {role}"))
    own = create_engine(make_url(normalize_url(url)).set(username=role))
    try:
        yield own
    finally:
        own.dispose()
        with engine.begin() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))


def test_only_the_prune_deletes_audit_events(tamper_db: tuple[str, Engine], app_role: Engine
                                             ) -> None:
    # The prune's flag no longer switches the trigger off for just any session.
    _, engine = tamper_db
    old, kept = finished_jobs(engine, 2)
    with pytest.raises(DBAPIError, match="append-only"), app_role.begin() as conn:
        conn.execute(text("SET LOCAL babelq.prune = 'on'"))
        conn.execute(text("DELETE FROM audit_events WHERE job_id = :j"), {"j": old})
    with app_role.begin() as conn:  # nor does the prune's function, for a job still there
        assert conn.execute(text("SELECT babelq_prune_audit(ARRAY[:j])"),
                            {"j": kept}).scalar_one() == 0
    with engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET finished_at = now() - interval '40 days' "
                          "WHERE id = :j"), {"j": old})
        conn.execute(text("UPDATE batches SET finished_at = now() - interval '40 days'"))
    with Session(app_role) as session:  # the prune itself, as the same ordinary role
        assert jobs.prune(session, older_than_days=30) == 1
        session.commit()
    assert checks.verify_all_chains(engine) == []
    assert [sql_count(engine, "SELECT count(*) FROM audit_events WHERE job_id = :j", j=j)
            for j in (old, kept)] == [0, 3]
