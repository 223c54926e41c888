"""the outbox tells Baton's own tidying (an expired card's edit, its thread's notice) from the answers to people:
10,000 cards expiring together in one channel stored 20,000 messages there, sent at Slack's pace of one a second,
and an answer to whoever asked the bot something next waited behind them all, five and a half hours. outbox.housekeeping
marks the tidying, which a channel's answers now go before

Revision ID: 0018
Revises: 0017
"""
import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None
# A column with a default: Baton of 0017 runs on this schema unchanged (it neither reads nor writes the column, and
# sends a channel's messages in the order they were stored, as before; what it stores is no housekeeping).
older_code_compatible = True


def upgrade() -> None:
    # NOT NULL with a constant default: no table rewrite on PostgreSQL (11 and later), a plain ALTER on SQLite.
    op.add_column("outbox", sa.Column("housekeeping", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("housekeeping")
