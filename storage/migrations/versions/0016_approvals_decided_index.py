"""a digest counts and lists the approvals decided in its window: an index by status and decision time, so that it
reads those, not every approval ever decided

Revision ID: 0016
Revises: 0015
"""
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None
# An index added: Baton of 0015 runs on this schema unchanged.
older_code_compatible = True


def upgrade() -> None:
    op.create_index("ix_approvals_decided", "approvals", ["status", "decided_at"])


def downgrade() -> None:
    op.drop_index("ix_approvals_decided", table_name="approvals")
