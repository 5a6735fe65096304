"""alerts received from outside, and silences

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 05:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None
compat = "expand"  # new tables: an older opsroom keeps serving (store/migrate.py)


def upgrade() -> None:
    op.create_table('alerts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('fingerprint', sa.String(length=128), nullable=False),
    sa.Column('starts_at', sa.Float(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('severity', sa.String(length=64), nullable=True),
    sa.Column('summary', sa.String(length=2000), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('annotations', sa.JSON(), nullable=False),
    sa.Column('service', sa.String(length=64), nullable=True),
    sa.Column('system', sa.String(length=64), nullable=True),
    sa.Column('environment', sa.String(length=64), nullable=True),
    sa.Column('url', sa.String(length=1024), nullable=True),
    sa.Column('group_key', sa.String(length=512), nullable=True),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.Column('last_seen_at', sa.Float(), nullable=False),
    sa.Column('repeats', sa.Integer(), nullable=False),
    sa.Column('ends_at', sa.Float(), nullable=True),
    sa.Column('acked_by', sa.String(length=128), nullable=True),
    sa.Column('acked_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts')),
    sa.UniqueConstraint('source', 'fingerprint', 'starts_at', name='uq_alerts_occurrence'),
    )
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.create_index('ix_alerts_status', ['status'], unique=False)

    op.create_table('alert_silences',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('service', sa.String(length=64), nullable=True),
    sa.Column('system', sa.String(length=64), nullable=True),
    sa.Column('matchers', sa.JSON(), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('starts_at', sa.Float(), nullable=False),
    sa.Column('ends_at', sa.Float(), nullable=False),
    sa.Column('expired_at', sa.Float(), nullable=True),
    sa.Column('expired_by', sa.String(length=128), nullable=True),
    sa.Column('remote', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alert_silences')),
    )
    with op.batch_alter_table('alert_silences', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alert_silences_ends_at'), ['ends_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('alert_silences', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_alert_silences_ends_at'))
    op.drop_table('alert_silences')
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_index('ix_alerts_status')
    op.drop_table('alerts')
