"""Alembic environment: runs against the connection handed over by ``storage.migrate``."""

from alembic import context
from sqlmodel import SQLModel

import storage.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from storage.migrate import baton_tables_only, no_empty_revision

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    include_name=baton_tables_only,
    process_revision_directives=no_empty_revision,
)
with context.begin_transaction():
    context.run_migrations()
