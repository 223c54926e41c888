"""the playground's live streams follow a change number, not the writers' clocks: with two replicas whose clocks
differed by more than 5 s, a page missed the other replica's messages and card edits until it was reloaded

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None
# A column with a default and an index: Baton of 0010 runs on this schema unchanged (it neither reads nor writes
# the column; what it stores meanwhile has 0, which the new streams leave to a reload of the page).
older_code_compatible = True


def upgrade() -> None:
    # The rows there now are 0: older than any stream that reads the column.
    with op.batch_alter_table("playground_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("change", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.create_index("ix_playground_change", ["change"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("playground_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_playground_change")
        batch_op.drop_column("change")
