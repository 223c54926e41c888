"""an index for a digest's failures: the runs that failed in its window, whenever they started

Revision ID: 0006
Revises: 0005
"""
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_failed", "runs", ["platform", "channel", "status", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_runs_failed", table_name="runs")
