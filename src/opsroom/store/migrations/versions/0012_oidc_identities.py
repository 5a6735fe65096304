"""oidc identities: the IdP account (issuer, sub) each single sign-on user was created for

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 19:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None
compat = "expand"  # a new table: an older opsroom keeps serving (store/migrate.py)


def upgrade() -> None:
    op.create_table('oidc_identities',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('issuer', sa.String(length=255), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('groups', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('last_login_at', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_oidc_identities_user_id_users'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oidc_identities')),
    # Matched on (issuer, sub), never on a name claim: an IdP user renamed to an existing name takes nothing over.
    sa.UniqueConstraint('issuer', 'subject', name='uq_oidc_identities_issuer_subject'),
    sa.UniqueConstraint('user_id', name=op.f('uq_oidc_identities_user_id')),
    )


def downgrade() -> None:
    op.drop_table('oidc_identities')
