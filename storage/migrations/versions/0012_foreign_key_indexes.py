"""indexes on three foreign keys: deleting a run, an inbound event or a thread record (data retention) made the
database read all of effects, runs or approvals for the rows naming it (10,000 old rows of each: one pass of
the retention 21.5 s on SQLite and 80 s on PostgreSQL without them, 2.7 s and 8.5 s with them)

Revision ID: 0012
Revises: 0011
"""
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None
# Only indexes: Baton of 0011 runs on this schema unchanged (storage.migrate.OLDEST_READER_TABLE).
older_code_compatible = True


def upgrade() -> None:
    op.create_index("ix_runs_inbound", "runs", ["inbound_id"])
    op.create_index("ix_approvals_thread", "approvals", ["thread_record_id"])
    op.create_index("ix_effects_run", "effects", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_effects_run", table_name="effects")
    op.drop_index("ix_approvals_thread", table_name="approvals")
    op.drop_index("ix_runs_inbound", table_name="runs")
