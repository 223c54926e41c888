"""a message's tries that the platform only put off (a 429, a refused token) are counted apart from its attempts:
every try counted towards the attempts after which Baton gives a message up, so one rate-limited twelve times was
given up for good at its first failure after

Revision ID: 0017
Revises: 0016
"""
import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None
# A column with a default: Baton of 0015 and 0016 runs on this schema unchanged (it neither reads nor writes the
# column, and counts every try, as before).
older_code_compatible = True


def upgrade() -> None:
    # NOT NULL with a constant default: no table rewrite on PostgreSQL (11 and later), a plain ALTER on SQLite.
    op.add_column("outbox", sa.Column("put_offs", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("put_offs")
