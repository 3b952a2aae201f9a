"""Initial schema: tenants, api keys, batches, jobs, results, decisions, audit trail.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
NOW = sa.text("now()")

APPEND_ONLY = """
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Retention pruning is the one sanctioned delete, and it must say so.
    IF TG_OP = 'DELETE' AND current_setting('babelq.prune', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
"""


def _id() -> sa.Column:
    return sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True)


def _counter(name: str) -> sa.Column:
    return sa.Column(name, sa.Integer, nullable=False, server_default="0")


def upgrade() -> None:
    op.create_table(
        "tenants",
        _id(),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
    )
    op.create_table(
        "api_keys",
        _id(),
        sa.Column("tenant_id", sa.BigInteger, sa.ForeignKey("tenants.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("name", sa.Text, nullable=False, server_default=""),
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("key_hash", sa.Text, nullable=False, unique=True),
        sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("revoked_at", TS),
    )
    op.create_table(
        "batches",
        _id(),
        sa.Column("tenant_id", sa.BigInteger, sa.ForeignKey("tenants.id", ondelete="CASCADE"),
                  nullable=False),
        *(_counter(c) for c in ("total", "rejected", "queued", "running", "succeeded", "dead",
                                "cancelled")),
        sa.Column("errors", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
    )
    op.create_table(
        "jobs",
        _id(),
        sa.Column("tenant_id", sa.BigInteger, sa.ForeignKey("tenants.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("batch_id", sa.BigInteger, sa.ForeignKey("batches.id", ondelete="CASCADE")),
        sa.Column("line", sa.Integer),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("params", JSONB, nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False, server_default="1"),
        sa.Column("status", sa.Text, nullable=False, server_default="queued"),
        _counter("attempt"),
        _counter("attempt_base"),
        sa.Column("max_attempts", sa.Integer, nullable=False, server_default="3"),
        sa.Column("run_after", TS),
        sa.Column("lease_until", TS),
        sa.Column("published_at", TS),
        sa.Column("worker", sa.Text),
        sa.Column("error", JSONB),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("ref", sa.Text),
        _counter("audit_seq"),
        sa.Column("audit_head", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'dead', 'cancelled')",
            name="jobs_status_valid",
        ),
        sa.CheckConstraint("priority BETWEEN 0 AND 2", name="jobs_priority_valid"),
    )
    op.create_index("jobs_tenant_idempotency", "jobs", ["tenant_id", "idempotency_key"],
                    unique=True, postgresql_where=sa.text("idempotency_key IS NOT NULL"))
    op.create_index("jobs_tenant_id", "jobs", ["tenant_id", "id"])
    op.create_index("jobs_batch_line", "jobs", ["batch_id", "line"])
    op.create_index("jobs_queued", "jobs", ["priority", "id"],
                    postgresql_where=sa.text("status = 'queued'"))
    op.create_index("jobs_running_lease", "jobs", ["lease_until"],
                    postgresql_where=sa.text("status = 'running'"))
    # Retries and returned leases wait here for the relay; a small index even under a backlog.
    op.create_index("jobs_unpublished", "jobs", ["priority", "id"],
                    postgresql_where=sa.text("status = 'queued' AND published_at IS NULL"))
    op.create_table(
        "results",
        sa.Column("job_id", sa.BigInteger, sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("result", JSONB, nullable=False),
        sa.Column("result_sha256", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
    )
    # Results are small JSON documents written once: compressing them costs more than it saves.
    op.execute("ALTER TABLE results ALTER COLUMN result SET STORAGE EXTERNAL")
    op.create_table(
        "decisions",
        sa.Column("job_id", sa.BigInteger, sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("decision", sa.Text, nullable=False),
        sa.Column("stop_reason", sa.Text),
        sa.Column("cycles_evaluated", sa.Integer, nullable=False),
        *(sa.Column(c, sa.Double, nullable=False)
          for c in ("similarity", "risk", "composite_quality", "remaining_budget")),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
    )
    op.create_table(
        "audit_events",
        sa.Column("job_id", sa.BigInteger, primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("details", JSONB, nullable=False),
        sa.Column("prev_hash", sa.Text, nullable=False),
        sa.Column("hash", sa.Text, nullable=False),
    )
    op.execute(APPEND_ONLY)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS audit_events CASCADE")
    op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
    for table in ("decisions", "results", "jobs", "batches", "api_keys", "tenants"):
        op.drop_table(table)
