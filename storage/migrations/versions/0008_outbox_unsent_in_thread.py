"""an index for "is anything of this thread still unsent?": asked at every reply and every claim, it read every
row the thread ever sent (6 ms at 50,000, with SQLite's write lock held)

Revision ID: 0008
Revises: 0007
"""
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_thread_status", "outbox", ["platform", "channel", "thread", "status", "id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_thread_status", table_name="outbox")
