"""chat accounts linked to users, and the one-time codes that link them

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 01:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None
compat = "expand"  # new tables: an older opsroom keeps serving (store/migrate.py)


def upgrade() -> None:
    op.create_table('chat_links',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('platform', sa.String(length=64), nullable=False),
    sa.Column('account_id', sa.String(length=255), nullable=False),
    sa.Column('display_name', sa.String(length=255), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_chat_links_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_links')),
    # One account acts as one user at most (a user may link several accounts).
    sa.UniqueConstraint('platform', 'account_id', name='uq_chat_links_platform_account'),
    )
    with op.batch_alter_table('chat_links', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chat_links_user_id'), ['user_id'], unique=False)

    op.create_table('link_codes',
    sa.Column('id', sa.Integer(), nullable=False),
    # sha256 of the code, never the code.
    sa.Column('code_hash', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('issued_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('used_at', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_link_codes_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_link_codes')),
    sa.UniqueConstraint('code_hash', name=op.f('uq_link_codes_code_hash')),
    )
    with op.batch_alter_table('link_codes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_link_codes_user_id'), ['user_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('link_codes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_link_codes_user_id'))
    op.drop_table('link_codes')
    with op.batch_alter_table('chat_links', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chat_links_user_id'))
    op.drop_table('chat_links')
