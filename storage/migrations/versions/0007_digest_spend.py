"""digest firings keep what their own model summary cost (tokens, dollars), which the next digests count

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("digest_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tokens", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("cost", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("digest_runs", schema=None) as batch_op:
        batch_op.drop_column("cost")
        batch_op.drop_column("tokens")
