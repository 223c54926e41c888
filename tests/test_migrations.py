"""The migrations make the schema the models describe (columns, types, nullability, indexes), on both databases."""

from __future__ import annotations

import os

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine
from sqlmodel import SQLModel

import storage.models  # noqa: F401  (the tables)
from storage.db import sync_url
from storage.checkpointer import open_checkpointer
from storage.migrate import MIGRATIONS, baton_tables_only, upgrade
from tests.support import run_cli


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


async def test_langgraphs_checkpoint_tables_are_no_difference_and_no_change_writes_no_migration(
        database_url: str, tmp_path) -> None:
    """On PostgreSQL LangGraph's checkpointer keeps its tables in Baton's database: compared with the models
    they were tables to drop, and ``baton db revision`` wrote their drop into the next migration (which the
    next ``baton run`` would have applied). With nothing changed it wrote an empty migration as the new head."""
    upgrade(database_url)
    async with open_checkpointer(database_url):  # its tables, as ``baton run`` makes them
        pass
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection, opts={
                "compare_type": True, "include_name": baton_tables_only}), SQLModel.metadata)
    finally:
        engine.dispose()
    assert differences == []

    versions = MIGRATIONS / "versions"
    before = set(versions.iterdir())
    try:
        done = run_cli("db", "revision", "nothing changed", cwd=tmp_path, env={**os.environ, "BATON_DATABASE_URL": database_url})
    finally:
        for stray in set(versions.iterdir()) - before:  # a failure here must not leave a second head behind
            if stray.is_file():
                stray.unlink()
        assert set(versions.iterdir()) - before <= {versions / "__pycache__"}
    assert done.returncode == 0, done.stderr
    assert "no migration was written" in done.stdout
