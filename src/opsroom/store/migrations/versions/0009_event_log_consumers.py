"""event log consumers: an index for reading the log in commit order, txid filled by PostgreSQL

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 16:20:00

Expand only: an index, and on PostgreSQL a column default. Readers take rows in (txid, id) order
below the safe horizon (eventlog/log.py); the default stamps the writing transaction's id on a row
even when its INSERT does not name the column, so no row can hide from readers with a NULL txid.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None
compat = "expand"  # an index and a default: an older opsroom keeps serving (store/migrate.py)


def upgrade() -> None:
    with op.batch_alter_table('event_log') as batch:
        batch.create_index('ix_event_log_txid_id', ['txid', 'id'], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column('event_log', 'txid', server_default=sa.text("(pg_current_xact_id()::text::bigint)"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column('event_log', 'txid', server_default=None)
    with op.batch_alter_table('event_log') as batch:
        batch.drop_index('ix_event_log_txid_id')
