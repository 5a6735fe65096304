"""sealed secret parameters, process groups of running executions, where a user came from

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 22:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None
compat = "expand"  # nullable columns, and one with a server default: older code inserts without them


def upgrade() -> None:
    with op.batch_alter_table('executions') as batch:
        # Secret parameter values, encrypted (AES-GCM); `params` keeps only their masks.
        batch.add_column(sa.Column('secret_params', sa.Text(), nullable=True))
        # The running step's process group and its start time (to kill it after a crash, only if still ours).
        batch.add_column(sa.Column('pgid', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('pg_started', sa.String(length=32), nullable=True))
    with op.batch_alter_table('users') as batch:
        # 'catalog' users are reconciled with the catalog at start; 'local' ones (opsroom user add) are not.
        batch.add_column(sa.Column('source', sa.String(length=16), nullable=False, server_default='local'))
        # Who disabled a user: 'catalog' (removed from it: re-enabled if it comes back) or 'admin' (stays off).
        batch.add_column(sa.Column('disabled_by', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('users') as batch:
        batch.drop_column('disabled_by')
        batch.drop_column('source')
    with op.batch_alter_table('executions') as batch:
        batch.drop_column('pg_started')
        batch.drop_column('pgid')
        batch.drop_column('secret_params')
