"""cluster-wide rule budgets: a lock row per rule, and an index for counting a rule's runs

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 16:20:00

Expand only (a new table, a new index): an older opsroom keeps serving beside this one. It
does not take the lock, so the cluster-wide limit holds once every server runs this version.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None
compat = "expand"  # new table and index: an older opsroom keeps serving (store/migrate.py)


def upgrade() -> None:
    op.create_table(
        'rule_budgets',
        sa.Column('rule', sa.String(length=64), nullable=False),
        sa.Column('claimed_at', sa.Float(), nullable=False),
        sa.Column('holder', sa.String(length=96), nullable=False),
        sa.PrimaryKeyConstraint('rule', name=op.f('pk_rule_budgets')),
    )
    with op.batch_alter_table('rule_runs') as batch:
        batch.create_index('ix_rule_runs_budget', ['rule', 'outcome', 'at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('rule_runs') as batch:
        batch.drop_index('ix_rule_runs_budget')
    op.drop_table('rule_budgets')
