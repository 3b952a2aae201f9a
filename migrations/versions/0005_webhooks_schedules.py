"""Webhook endpoints and deliveries, periodic schedules, and the index of delayed jobs.

A delayed job (run_at / delay) is stored queued with published_at in the year 9999, "held":
neither the relay's unpublished scan nor its stale scan ever sees it, so a million of
them cost each relay pass nothing. jobs_held serves the one statement that releases
those whose time has come (app.jobs.delayed.release_due).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
NOW = sa.text("now()")


def _id() -> sa.Column:
    return sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True)


def _tenant() -> sa.Column:
    return sa.Column("tenant_id", sa.BigInteger,
                     sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False)


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.create_table(
        "webhook_endpoints",
        _id(),
        _tenant(),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("events", ARRAY(sa.Text), nullable=False),
        sa.Column("include_batch_jobs", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
    )
    op.create_index("webhook_endpoints_tenant", "webhook_endpoints", ["tenant_id", "id"])
    op.create_table(
        "webhook_deliveries",
        _id(),
        sa.Column("endpoint_id", sa.BigInteger,
                  sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False),
        sa.Column("tenant_id", sa.BigInteger, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("job_id", sa.BigInteger),
        sa.Column("batch_id", sa.BigInteger),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("history", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("payload", JSONB),
        sa.Column("response", sa.Text),
        sa.Column("next_attempt_at", TS, nullable=False, server_default=NOW),
        sa.Column("retry_until", TS),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("finished_at", TS),
    )
    op.create_index("webhook_deliveries_due", "webhook_deliveries", ["next_attempt_at"],
                    postgresql_where=sa.text("status = 'pending'"))
    op.create_index("webhook_deliveries_endpoint", "webhook_deliveries", ["endpoint_id", "id"])
    op.create_table(
        "schedules",
        _id(),
        _tenant(),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("cron", sa.Text, nullable=False),
        sa.Column("timezone", sa.Text, nullable=False),
        sa.Column("job", JSONB, nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("next_fire_at", TS, nullable=False),
        sa.Column("last_fire_at", TS),
        sa.Column("last_job_id", sa.BigInteger),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.UniqueConstraint("tenant_id", "name", name="schedules_tenant_name"),
    )
    op.create_index("schedules_due", "schedules", ["next_fire_at"],
                    postgresql_where=sa.text("NOT paused"))
    op.create_index("jobs_held", "jobs", ["run_after"], postgresql_where=sa.text(
        "status = 'queued' AND published_at = '9999-01-01 00:00:00+00'"))


def downgrade() -> None:
    op.drop_index("jobs_held", table_name="jobs")
    op.drop_table("schedules")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
