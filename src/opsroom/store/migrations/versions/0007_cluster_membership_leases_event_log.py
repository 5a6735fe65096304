"""cluster: node membership, named leases, the durable event log and consumer positions

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 16:20:00

Expand only (new tables): a server of the previous version keeps serving beside this one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None
compat = "expand"  # new tables: an older opsroom keeps serving (store/migrate.py)


def upgrade() -> None:
    op.create_table(
        'cluster_nodes',
        sa.Column('node_id', sa.String(length=96), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('environment', sa.String(length=64), nullable=True),
        sa.Column('version', sa.String(length=32), nullable=False),
        sa.Column('started_at', sa.Float(), nullable=False),
        sa.Column('heartbeat_at', sa.Float(), nullable=False),
        sa.Column('stopped_at', sa.Float(), nullable=True),
        sa.Column('info', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('node_id', name=op.f('pk_cluster_nodes')),
    )
    with op.batch_alter_table('cluster_nodes') as batch:
        batch.create_index(batch.f('ix_cluster_nodes_heartbeat_at'), ['heartbeat_at'], unique=False)
    op.create_table(
        'cluster_leases',
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('holder', sa.String(length=96), nullable=True),
        sa.Column('expires_at', sa.Float(), nullable=False),
        sa.Column('epoch', sa.Integer(), nullable=False),
        sa.Column('taken_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_cluster_leases')),
    )
    op.create_table(
        'event_log',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('uid', sa.String(length=36), nullable=False),
        sa.Column('type', sa.String(length=64), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('origin', sa.String(length=96), nullable=False),
        sa.Column('correlation_id', sa.String(length=64), nullable=True),
        sa.Column('txid', sa.BigInteger(), nullable=True),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_event_log')),
        sa.UniqueConstraint('uid', name=op.f('uq_event_log_uid')),
    )
    with op.batch_alter_table('event_log') as batch:
        batch.create_index(batch.f('ix_event_log_at'), ['at'], unique=False)
        batch.create_index(batch.f('ix_event_log_correlation_id'), ['correlation_id'], unique=False)
    op.create_table(
        'consumer_positions',
        sa.Column('consumer', sa.String(length=64), nullable=False),
        sa.Column('position', sa.BigInteger(), nullable=False),
        sa.Column('txid', sa.BigInteger(), nullable=True),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.Column('holder', sa.String(length=96), nullable=True),
        sa.PrimaryKeyConstraint('consumer', name=op.f('pk_consumer_positions')),
    )


def downgrade() -> None:
    op.drop_table('consumer_positions')
    with op.batch_alter_table('event_log') as batch:
        batch.drop_index(batch.f('ix_event_log_correlation_id'))
        batch.drop_index(batch.f('ix_event_log_at'))
    op.drop_table('event_log')
    op.drop_table('cluster_leases')
    with op.batch_alter_table('cluster_nodes') as batch:
        batch.drop_index(batch.f('ix_cluster_nodes_heartbeat_at'))
    op.drop_table('cluster_nodes')
