"""a digest told a cancelled run from a failure by its error (``LIKE 'cancelled by %'``), which no index holds (on
PostgreSQL an error of up to 1,000 characters is too long for one): its percentiles, per-graph counts and days
read the table row by row, and a week's digest over 1,000,000 runs took 255 ms. runs.cancelled marks such a run,
and the digest's two indexes hold it

Revision ID: 0014
Revises: 0013
"""
import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None
# A column with a default and two indexes rebuilt with it: Baton of 0013 runs on this schema unchanged (it neither
# reads nor writes the column). A run it cancels meanwhile is stored unmarked, a failure to the new digests; the
# fill below, run again by hand, marks those (README: going back from 0009-0014 by hand).
older_code_compatible = True

CANCELLED_BY = "cancelled by "  # bot.threads.CANCELLED_BY, as of this revision
DIGEST = ["platform", "channel", "started_at", "status", "graph", "turnaround_ms", "waited_seconds", "tokens", "cost"]
ENDED = ["platform", "channel", "finished_at", "status", "graph", "turnaround_ms", "waited_seconds"]


def upgrade() -> None:
    # NOT NULL with a constant default: no table rewrite on PostgreSQL (11 and later), a plain ALTER on SQLite.
    op.add_column("runs", sa.Column("cancelled", sa.Boolean(), nullable=False, server_default=sa.false()))
    # What the digests counted as cancelled: failed, the error starting with CANCELLED_BY. Compared as
    # Python's startswith and PostgreSQL's LIKE do, case and all (SQLite's LIKE ignored case).
    op.execute(sa.text("UPDATE runs SET cancelled = :yes WHERE status = 'failed' AND substr(error, 1, :length) = :prefix")
               .bindparams(yes=True, length=len(CANCELLED_BY), prefix=CANCELLED_BY))
    op.drop_index("ix_runs_digest", table_name="runs")
    op.create_index("ix_runs_digest", "runs", [*DIGEST, "cancelled"])
    op.drop_index("ix_runs_ended", table_name="runs")
    op.create_index("ix_runs_ended", "runs", [*ENDED, "cancelled"])


def downgrade() -> None:
    op.drop_index("ix_runs_ended", table_name="runs")
    op.create_index("ix_runs_ended", "runs", ENDED)
    op.drop_index("ix_runs_digest", table_name="runs")
    op.create_index("ix_runs_digest", "runs", DIGEST)
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("cancelled")
