"""integrity: the signed file baseline per site and the changes not yet accepted

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None
compat = "expand"  # new tables: an older opsroom keeps serving (store/migrate.py)


def upgrade() -> None:
    op.create_table('integrity_baselines',
    sa.Column('site', sa.String(length=128), nullable=False),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('entries', sa.Text(), nullable=False),
    sa.Column('texts', sa.Text(), nullable=False),
    sa.Column('signature', sa.String(length=128), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('updated_by', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('site', name=op.f('pk_integrity_baselines'))
    )
    op.create_table('integrity_changes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('site', sa.String(length=128), nullable=False),
    sa.Column('path_key', sa.String(length=64), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('kinds', sa.JSON(), nullable=False),
    sa.Column('old', sa.JSON(), nullable=True),
    sa.Column('new', sa.JSON(), nullable=True),
    sa.Column('first_at', sa.Float(), nullable=False),
    sa.Column('last_at', sa.Float(), nullable=False),
    sa.Column('event_uid', sa.String(length=36), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_integrity_changes')),
    sa.UniqueConstraint('site', 'path_key', name=op.f('uq_integrity_changes_site'))
    )


def downgrade() -> None:
    op.drop_table('integrity_changes')
    op.drop_table('integrity_baselines')
