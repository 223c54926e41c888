"""The migrations make the schema the models describe (columns, types, nullability, indexes), on both databases."""

from __future__ import annotations

import os
import shutil

import pytest
from alembic.autogenerate import compare_metadata
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from alembic.migration import MigrationContext
from sqlalchemy import create_engine
from sqlmodel import SQLModel

import storage.models  # noqa: F401  (the tables)
from storage.db import sync_url
from storage.checkpointer import open_checkpointer
from storage.migrate import MIGRATIONS, alembic_config, baton_tables_only, oldest_reader, upgrade
from tests.support import run_cli


def test_the_migrated_schema_is_the_models_schema(database_url: str) -> None:
    upgrade(database_url)
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection, opts={  # not its own bookkeeping
                "compare_type": True, "include_name": baton_tables_only}), SQLModel.metadata)
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


NEWER = '''"""a newer Baton's migration
Revision ID: 0100
Revises: {head}
"""
from alembic import op

revision = "0100"
down_revision = "{head}"
branch_labels = None
depends_on = None
{marked}

def upgrade() -> None:
    op.create_index("ix_newer_runs", "runs", ["graph", "id"])


def downgrade() -> None:
    op.drop_index("ix_newer_runs", table_name="runs")
'''


@pytest.mark.parametrize("compatible", [True, False], ids=["only-adds", "changes"])
def test_a_replica_restarts_on_a_database_a_newer_baton_only_added_to(database_url: str, tmp_path, monkeypatch,
                                                                       compatible: bool) -> None:
    """A rolling upgrade: the new code migrated, and an older replica that restarted refused the database ("a newer
    Baton migrated it") though the newer migrations only added an index, so a crash-looping old pod or a
    rolled-back deploy served nobody. A migration that says ``older_code_compatible`` lets older code run on it;
    one that does not still stops it with that line."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    newer = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, newer, ignore=shutil.ignore_patterns("__pycache__"))
    (newer / "versions" / "0100_newer.py").write_text(NEWER.format(
        head=head, marked="older_code_compatible = True" if compatible else ""))
    monkeypatch.setattr("storage.migrate.MIGRATIONS", newer)
    upgrade(database_url)  # the newer Baton
    monkeypatch.setattr("storage.migrate.MIGRATIONS", MIGRATIONS)
    if compatible:
        upgrade(database_url)  # this one: runs on it as it is, changes nothing
    else:
        with pytest.raises(CommandError, match="at revision 0100, which this Baton does not have"):
            upgrade(database_url)
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            assert MigrationContext.configure(connection).get_current_revision() == "0100"
            assert oldest_reader(connection) == ("0008" if compatible else "0100")  # 0009 only added an index too
    finally:
        engine.dispose()
