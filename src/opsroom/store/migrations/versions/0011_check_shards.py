"""check shards: system health as last announced, shared by the servers that run a system's checks

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 16:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None
compat = "expand"  # a new table: an older opsroom keeps serving (store/migrate.py)


def upgrade() -> None:
    op.create_table('system_health',
    sa.Column('system', sa.String(length=64), nullable=False),
    sa.Column('healthy', sa.Boolean(), nullable=False),
    sa.Column('changed_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('system', name=op.f('pk_system_health'))
    )


def downgrade() -> None:
    op.drop_table('system_health')
