"""Batches can be marked cancelling; only the prune's function can delete audit events.

A batch cancel runs in slices, each its own transaction, so a million jobs never sit in
one; `batches.cancelling` marks the batch meanwhile, and workers start no job of a
batch so marked (the partial index makes that check a lookup of the few marked rows).

The audit trail's trigger let any session delete events by setting the GUC
`babelq.prune`. Now deletion also needs the table owner's rights: it is allowed only
inside babelq_prune_audit(), which runs as the owner (SECURITY DEFINER) and deletes only
the events of jobs that no longer exist (the prune deletes the jobs first). A session of
any other role cannot switch the trigger off; the owner could drop it anyway, and that is
what `babelq audit verify` is for.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

APPEND_ONLY = """
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Only babelq_prune_audit() deletes: it runs as the table's owner and says so. Any
    -- session may set the flag, but only the owner's rights make it count.
    IF TG_OP = 'DELETE' AND current_setting('babelq.prune', true) = 'on'
       AND (SELECT relowner FROM pg_class WHERE oid = TG_RELID)
           = (SELECT oid FROM pg_roles WHERE rolname = current_user) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE FUNCTION babelq_prune_audit(job_ids bigint[]) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    deleted bigint;
BEGIN
    PERFORM set_config('babelq.prune', 'on', true);
    DELETE FROM audit_events a WHERE a.job_id = ANY(job_ids)
        AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = a.job_id);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    PERFORM set_config('babelq.prune', 'off', true);
    RETURN deleted;
END;
$$;
"""

#: The trigger function of revision 0001, for downgrade.
APPEND_ONLY_0001 = """
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('babelq.prune', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
DROP FUNCTION babelq_prune_audit(bigint[]);
"""


def upgrade() -> None:
    op.add_column("batches", sa.Column("cancelling", sa.Boolean, nullable=False,
                                       server_default=sa.false()))
    op.create_index("batches_cancelling", "batches", ["id"],
                    postgresql_where=sa.text("cancelling"))
    op.execute(APPEND_ONLY)


def downgrade() -> None:
    op.execute(APPEND_ONLY_0001)
    op.drop_index("batches_cancelling", table_name="batches")
    op.drop_column("batches", "cancelling")
