"""audit: each record names the hashed form of its hash (v1 before this revision, v2 = RFC 8785)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 20:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None
# A column with a server default: an older opsroom keeps appending, and its records are v1,
# which is what the default says (store/migrate.py).
compat = "expand"


def upgrade() -> None:
    with op.batch_alter_table('audit_records') as batch:
        batch.add_column(sa.Column('v', sa.SmallInteger(), server_default='1', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('audit_records') as batch:
        batch.drop_column('v')
