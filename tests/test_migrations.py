"""The migrations make the schema the models describe (columns, types, nullability, indexes), on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine
from sqlmodel import SQLModel

import storage.models  # noqa: F401  (the tables)
from storage.db import sync_url
from storage.migrate import upgrade


def test_the_migrated_schema_is_the_models_schema(database_url: str) -> None:
    upgrade(database_url)
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}),
                                           SQLModel.metadata)
    finally:
        engine.dispose()
    assert differences == []
