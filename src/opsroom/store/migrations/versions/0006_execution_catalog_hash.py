"""executions record the catalog version (content hash) they were requested under

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 13:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None
compat = "expand"  # a nullable column: an older opsroom keeps serving (store/migrate.py)


def upgrade() -> None:
    # Nullable: runs requested before this column existed have no known catalog version.
    with op.batch_alter_table('executions') as batch:
        batch.add_column(sa.Column('catalog_hash', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('executions') as batch:
        batch.drop_column('catalog_hash')
