"""The job console: login sessions, and the indexes its pages need at 10 million jobs.

console_sessions holds one row per console login, keyed by the sha256 of its cookie, so
logout and key revocation end it at once, on every api process.

Indexes (EXPLAIN plans and ingestion cost in the commit message of this revision):
- jobs_console_queued: the backlog per tenant and lane, counted (up to a cap) without
  reading the rest of the queue. The only one an upload pays for: every new job is queued.
- jobs_console_finished: jobs finished per lane in a recent window (throughput, and the
  overview's counts per status). New jobs have no finished_at, so ingestion never sees it.
- jobs_console_failed, jobs_console_tenant_failed: dead and cancelled jobs newest first,
  of every tenant (an admin) or of one (the list, bulk retry).
- jobs_console_ref: a job by its ref; only jobs that carry one are in it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: name, columns, partial-index predicate
INDEXES = [
    ("jobs_console_queued", ["tenant_id", "kind", "priority"], "status = 'queued'"),
    ("jobs_console_finished", ["tenant_id", "kind", "priority", "status", "finished_at"],
     "finished_at IS NOT NULL"),
    ("jobs_console_failed", ["status", "id"], "status IN ('dead', 'cancelled')"),
    ("jobs_console_tenant_failed", ["tenant_id", "status", "id"],
     "status IN ('dead', 'cancelled')"),
    ("jobs_console_ref", ["ref"], "ref IS NOT NULL"),
]
#: Access methods other than btree: a ref is only ever looked up whole, and a hash index
#: costs an upload with random refs half as much CPU as a btree (1.6 against 3.3 us a row).
USING = {"jobs_console_ref": "hash"}


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("token_hash", sa.Text, primary_key=True),
        sa.Column("key_id", sa.BigInteger, sa.ForeignKey("api_keys.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_console_sessions_key_id", "console_sessions", ["key_id"])
    # CONCURRENTLY: on a live queue, building these reads the whole jobs table, and a
    # plain CREATE INDEX would hold every insert and update of jobs meanwhile.
    with op.get_context().autocommit_block():
        for name, columns, where in INDEXES:
            op.create_index(name, "jobs", columns, postgresql_where=sa.text(where),
                            postgresql_using=USING.get(name, "btree"),
                            postgresql_concurrently=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, _, _ in INDEXES:
            op.drop_index(name, table_name="jobs", postgresql_concurrently=True)
    op.drop_table("console_sessions")
