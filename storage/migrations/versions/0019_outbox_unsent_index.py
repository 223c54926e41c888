"""a partial index of the outbox's unsent rows, by channel and lane: each claim read every unsent row of its platform
(and checked each for an earlier row of its thread, then sorted them), so with 20,000 expiry notices waiting in one
Slack channel every claim, one a second, took most of a second, the event loop (on SQLite) waiting. A claim now walks
the channels with unsent rows and takes each one's first due row. A housekeeping row an answer is stored behind in
its thread is stored as an answer from now on (``Outbox.enqueue``); here, those already waiting

Revision ID: 0019
Revises: 0018
"""
import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None
# An index, and rows of the answers' lane (as Baton of 0018 tells lanes) marked so: Baton of 0018 runs on this schema
# unchanged. While one still serves, an answer it stores behind housekeeping in a thread leaves that housekeeping
# unmarked: the newer replicas send that thread with the housekeeping (in its order, nothing lost).
older_code_compatible = True

UNSENT = "status IN ('pending', 'sending')"  # storage.models.OUTBOX_UNSENT, as of this revision


def upgrade() -> None:
    # In the migration's one transaction (storage.migrate): not CONCURRENTLY, which PostgreSQL runs outside any.
    # Writes to the outbox wait while it is built; it reads the whole table once.
    op.create_index("ix_outbox_unsent", "outbox", ["platform", "channel", "housekeeping", "id"],
                    sqlite_where=sa.text(UNSENT), postgresql_where=sa.text(UNSENT))
    op.create_index("ix_outbox_unsent_thread", "outbox", ["platform", "channel", "thread", "id"],
                    sqlite_where=sa.text(UNSENT), postgresql_where=sa.text(UNSENT))
    op.execute(f"""
        UPDATE outbox SET housekeeping = false
        WHERE housekeeping AND {UNSENT} AND EXISTS (
            SELECT 1 FROM outbox AS answer
            WHERE answer.platform = outbox.platform AND answer.channel = outbox.channel
              AND answer.thread = outbox.thread AND answer.id > outbox.id
              AND answer.{UNSENT} AND NOT answer.housekeeping)""")


def downgrade() -> None:
    op.drop_index("ix_outbox_unsent_thread", table_name="outbox")
    op.drop_index("ix_outbox_unsent", table_name="outbox")
