"""data retention: what the deleted rows added to /metrics' counters, kept so that the counters never go down

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None
# Only a new table: Baton of 0009 runs on this schema unchanged (storage.migrate.OLDEST_READER_TABLE).
older_code_compatible = True


def upgrade() -> None:
    op.create_table(
        "forgotten_totals",
        sa.Column("metric", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("totals", sa.JSON(), nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("metric", "key"),
    )


def downgrade() -> None:
    op.drop_table("forgotten_totals")
