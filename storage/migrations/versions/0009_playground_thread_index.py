"""an index for the playground's paged reads: a page of a channel's top level or of a thread, and the reply
counts of its roots (scrolling back a channel of 25,000 rows: 30 ms a page without it, 0.2 ms with)

Revision ID: 0009
Revises: 0008
"""
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None
# Only an index: Baton of 0008 runs on this schema unchanged (storage.migrate.OLDEST_READER_TABLE).
older_code_compatible = True


def upgrade() -> None:
    op.create_index("ix_playground_thread", "playground_messages", ["channel", "thread_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_playground_thread", table_name="playground_messages")
