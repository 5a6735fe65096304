"""workers: runbook steps queued for Celery workers, and the output they stream back

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 16:20:00

Expand only (new tables): a server of the previous version keeps serving beside this one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None
compat = "expand"  # new tables: an older opsroom keeps serving (store/migrate.py)


def upgrade() -> None:
    op.create_table(
        'worker_steps',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('execution_id', sa.Integer(), nullable=False),
        sa.Column('step', sa.Integer(), nullable=False),
        sa.Column('environment', sa.String(length=64), nullable=False),
        sa.Column('token', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('worker', sa.String(length=96), nullable=True),
        sa.Column('queued_at', sa.Float(), nullable=False),
        sa.Column('started_at', sa.Float(), nullable=True),
        sa.Column('spawned_at', sa.Float(), nullable=True),
        sa.Column('finished_at', sa.Float(), nullable=True),
        sa.Column('pgid', sa.Integer(), nullable=True),
        sa.Column('pg_started', sa.String(length=32), nullable=True),
        sa.Column('exit_code', sa.Integer(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('cancel', sa.String(length=8), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_worker_steps')),
        sa.UniqueConstraint('execution_id', 'step', name='uq_worker_steps_execution_step'),
    )
    with op.batch_alter_table('worker_steps') as batch:
        batch.create_index(batch.f('ix_worker_steps_execution_id'), ['execution_id'], unique=False)
        batch.create_index(batch.f('ix_worker_steps_status'), ['status'], unique=False)
    op.create_table(
        'worker_output',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('step_id', sa.Integer(), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_worker_output')),
    )
    with op.batch_alter_table('worker_output') as batch:
        batch.create_index(batch.f('ix_worker_output_step_id'), ['step_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('worker_output') as batch:
        batch.drop_index(batch.f('ix_worker_output_step_id'))
    op.drop_table('worker_output')
    with op.batch_alter_table('worker_steps') as batch:
        batch.drop_index(batch.f('ix_worker_steps_status'))
        batch.drop_index(batch.f('ix_worker_steps_execution_id'))
    op.drop_table('worker_steps')
