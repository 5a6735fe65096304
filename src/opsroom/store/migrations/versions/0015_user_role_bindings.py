"""access: role bindings scoped by environment (and optionally system) beside the unscoped roles

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 20:25:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None
# A column with a server default: an older opsroom ignores it, and its users hold no scoped
# bindings, which is what the default says (store/migrate.py).
compat = "expand"


def upgrade() -> None:
    with op.batch_alter_table('users') as batch:
        batch.add_column(sa.Column('bindings', sa.JSON(), server_default='[]', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('users') as batch:
        batch.drop_column('bindings')
