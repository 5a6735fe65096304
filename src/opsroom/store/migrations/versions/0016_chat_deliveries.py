"""chat: the platform deliveries handled, so a retry on another server is not handled again

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 20:30:00

Expand only (a new table): an older opsroom keeps serving beside this one, deduplicating in its
own memory as before (a retry that lands on it may be handled twice until every server runs this
version).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None
compat = "expand"  # a new table: an older opsroom keeps serving (store/migrate.py)


def upgrade() -> None:
    op.create_table(
        'chat_deliveries',
        sa.Column('platform', sa.String(length=64), nullable=False),
        sa.Column('delivery', sa.String(length=128), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('platform', 'delivery', name=op.f('pk_chat_deliveries')),
    )
    with op.batch_alter_table('chat_deliveries') as batch:
        batch.create_index('ix_chat_deliveries_at', ['at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('chat_deliveries') as batch:
        batch.drop_index('ix_chat_deliveries_at')
    op.drop_table('chat_deliveries')
