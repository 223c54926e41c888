"""a digest counts a run's model tokens and cost with the runs that ended in its window (as their turnarounds), so
the index of the ended runs holds them: a digest reads it alone, as before

Revision ID: 0015
Revises: 0014
"""
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None
# An index rebuilt with two more columns: Baton of 0014 runs on this schema unchanged.
older_code_compatible = True

ENDED = ["platform", "channel", "finished_at", "status", "graph", "turnaround_ms", "waited_seconds", "cancelled"]


def upgrade() -> None:
    op.drop_index("ix_runs_ended", table_name="runs")
    op.create_index("ix_runs_ended", "runs", [*ENDED, "tokens", "cost"])


def downgrade() -> None:
    op.drop_index("ix_runs_ended", table_name="runs")
    op.create_index("ix_runs_ended", "runs", ENDED)
