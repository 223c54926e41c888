"""Alembic migrations, run programmatically (``baton db upgrade`` and at start-up)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event, text

from storage.db import SQLITE_BUSY_SECONDS, is_sqlite, sync_url

MIGRATIONS = Path(__file__).parent / "migrations"
_PG_MIGRATION_LOCK = 0x62617430  # "bat0": one replica migrates, the others wait for it


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database to ``revision``; safe when several replicas start at once."""
    engine = _migration_engine(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            config = alembic_config()
            config.attributes["connection"] = connection
            _check_not_newer(connection, config)
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def _check_not_newer(connection: Any, config: Config) -> None:
    """``CommandError`` naming the case when a newer Baton migrated the database (a rolling upgrade rolled
    back): Alembic only says it cannot locate the revision."""
    current = MigrationContext.configure(connection).get_current_revision()
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    if current is not None and current not in known:
        raise CommandError(f"the database is at revision {current[:40]}, which this Baton does not have: a newer "
                           "Baton migrated it. Run that Baton (or a newer one); Baton does not downgrade.")


def autogenerate(url: str, message: str) -> None:
    """Developer helper: write a new revision from the difference between models and ``url``."""
    engine = _migration_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.revision(config, message=message, autogenerate=True)
    finally:
        engine.dispose()


def _migration_engine(url: str) -> Engine:
    """An engine whose transactions hold the whole migration: PostgreSQL's DDL is transactional as it is.

    SQLite's driver begins a transaction only before INSERT, UPDATE or DELETE, so each CREATE or ALTER
    committed on its own: processes started together on a new file all created the tables, and all but
    one stopped at 'table ... already exists' (a migration cut short was left half made, too). Here a
    transaction begins with ``BEGIN IMMEDIATE``: it holds the write lock from the start, the others
    wait for it and then find the database migrated.
    """
    if not is_sqlite(url):
        return create_engine(sync_url(url))
    engine = create_engine(sync_url(url), connect_args={"timeout": SQLITE_BUSY_SECONDS})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver's own BEGINs off: ours below

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
