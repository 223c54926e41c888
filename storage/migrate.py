"""Alembic migrations, run programmatically (``baton db upgrade`` and at start-up)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event, inspect, text

from storage.db import SQLITE_BUSY_SECONDS, is_sqlite, sync_url
from storage.wal import use_wal

MIGRATIONS = Path(__file__).parent / "migrations"
_PG_MIGRATION_LOCK = 0x62617430  # "bat0": one replica migrates, the others wait for it
# One row: the oldest revision whose code may still run on this database, since the migrations after it only
# added what older code does not read (each says so: ``older_code_compatible = True``). Without it, an older
# replica that restarted during a rolling upgrade (or a rolled-back deploy) refused a database a newer Baton
# had only added an index to. Alembic's kind of bookkeeping, beside ``alembic_version``, not a model.
OLDEST_READER_TABLE = "baton_oldest_reader"
log = logging.getLogger("baton.database")


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
            else:
                check_sqlite_writable(connection)
            config = alembic_config()
            config.attributes["connection"] = connection
            if _runs_on_newer(connection, config):
                return
            command.upgrade(config, revision)
            _record_oldest_reader(connection, config)
            if connection.dialect.name == "postgresql":
                # A write that changes nothing (no row, no catalog: a role allowed to use the tables only may run
                # it): refused by a server that takes no writes (a hot standby, a read replica's address,
                # default_transaction_read_only), which an up-to-date database passed, and Baton started on it.
                connection.execute(text("UPDATE alembic_version SET version_num = version_num WHERE false"))
                _check_privileges(connection)
    finally:
        engine.dispose()


# A replica's role must read and write every table of Baton's, and draw ids from their sequences.
_NOT_USABLE = text("""
    SELECT t FROM unnest(CAST(:tables AS text[])) AS t
    WHERE CASE WHEN to_regclass(t) IS NULL THEN false
               ELSE NOT (has_table_privilege(t, 'SELECT') AND has_table_privilege(t, 'INSERT')
                         AND has_table_privilege(t, 'UPDATE') AND has_table_privilege(t, 'DELETE')) END
    UNION ALL
    SELECT t FROM unnest(CAST(:read AS text[])) AS t
    WHERE CASE WHEN to_regclass(t) IS NULL THEN false ELSE NOT has_table_privilege(t, 'SELECT') END
    UNION ALL
    SELECT s.oid::regclass::text FROM pg_class s
    JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid AND d.deptype IN ('a', 'i')
    WHERE d.refobjid IN (SELECT to_regclass(t) FROM unnest(CAST(:tables AS text[])) AS t)
      AND CASE WHEN s.relkind = 'S' THEN NOT has_sequence_privilege(s.oid, 'USAGE') ELSE false END
    ORDER BY 1""")


def _check_privileges(connection: Any) -> None:
    """``CommandError`` naming what the role may not use, and the GRANT that mends it. A replica running as a role
    granted the tables of the day (README) started on a database whose next migration had added a table for
    the owner alone: ``/metrics`` said ``baton_database_up 0`` for good (permission denied for table
    forgotten_totals), and what else needed the table failed at its first use."""
    from sqlmodel import SQLModel

    import storage.models  # noqa: F401 - the tables' definitions

    tables = sorted(SQLModel.metadata.tables)  # the migrations' own two are only read (alembic_version: above)
    refused = connection.execute(_NOT_USABLE, {"tables": tables, "read": ["alembic_version", OLDEST_READER_TABLE]}
                                 ).scalars().all()
    if refused:
        role = connection.execute(text("SELECT current_user")).scalar()
        raise CommandError(
            f"the role {role} may not read and write {', '.join(refused)}: as the tables' owner, GRANT ALL ON ALL "
            f"TABLES IN SCHEMA public TO {role} (and ON ALL SEQUENCES), after each `baton db upgrade` that makes "
            "tables (README: Running several replicas)")


def check_sqlite_writable(connection: Any) -> None:
    """Raise SQLite's own error ("attempt to write a readonly database", "unable to open database file") when
    the file cannot be written, inside the caller's transaction and leaving nothing behind. ``BEGIN IMMEDIATE``
    succeeds on a read-only file and an up-to-date database needs no write to migrate, so a read-only file
    passed the start and ``baton run`` stopped on a traceback (or at its first write)."""
    connection.exec_driver_sql("SAVEPOINT baton_write_check")
    try:
        connection.exec_driver_sql("CREATE TABLE baton_write_check (x)")
    finally:
        connection.exec_driver_sql("ROLLBACK TO baton_write_check")
        connection.exec_driver_sql("RELEASE baton_write_check")


def _runs_on_newer(connection: Any, config: Config) -> bool:
    """True when a newer Baton migrated the database with migrations that only added what this code does not
    read: it runs on the database as it is. ``CommandError`` naming the case when they changed more (a rolling
    upgrade rolled back): Alembic only says it cannot locate the revision."""
    current = MigrationContext.configure(connection).get_current_revision()
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    if current is None or current in known:
        return False
    if oldest_reader(connection) in known:
        log.warning("the database is at revision %s, which this Baton does not have: a newer Baton migrated it, "
                    "adding only what this one does not read, so it runs on it as it is", current[:40])
        return True
    raise CommandError(f"the database is at revision {current[:40]}, which this Baton does not have: a newer "
                       "Baton migrated it. Run that Baton (or a newer one); Baton does not downgrade.")


def oldest_reader(connection: Any) -> str | None:
    """The oldest revision whose code may run on the database (``OLDEST_READER_TABLE``), if one is recorded."""
    if not inspect(connection).has_table(OLDEST_READER_TABLE):
        return None
    return connection.execute(text(f"SELECT revision FROM {OLDEST_READER_TABLE}")).scalar()  # type: ignore[no-any-return]


def _record_oldest_reader(connection: Any, config: Config) -> None:
    """From the database's revision down, past the migrations marked ``older_code_compatible``: the first one
    not marked is the oldest revision whose code may run on it."""
    scripts = ScriptDirectory.from_config(config)
    oldest = MigrationContext.configure(connection).get_current_revision()
    while oldest is not None and getattr(scripts.get_revision(oldest).module, "older_code_compatible", False):
        oldest = scripts.get_revision(oldest).down_revision  # type: ignore[assignment]
    if oldest_reader(connection) == oldest and oldest is not None:
        return  # nothing to write: a role allowed to use the tables only may start on it
    connection.execute(text(f"CREATE TABLE IF NOT EXISTS {OLDEST_READER_TABLE} (revision VARCHAR(32))"))
    connection.execute(text(f"DELETE FROM {OLDEST_READER_TABLE}"))
    connection.execute(text(f"INSERT INTO {OLDEST_READER_TABLE} (revision) VALUES (:revision)"), {"revision": oldest})


def autogenerate(url: str, message: str) -> Path | None:
    """Developer helper: write a new revision from the difference between models and ``url``; its file, or
    ``None`` when they do not differ (an empty revision would only become the new head)."""
    engine = _migration_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            written = command.revision(config, message=message, autogenerate=True)
    finally:
        engine.dispose()
    scripts = written if isinstance(written, list) else [written]
    return next((Path(script.path) for script in scripts if script is not None), None)


# LangGraph's checkpointer keeps its tables in Baton's PostgreSQL database: compared with Baton's models, they
# were tables to drop, and ``baton db revision`` wrote their drop into the next migration.
CHECKPOINTER_TABLES = "checkpoint"


def baton_tables_only(name: str | None, type_: str, _parent_names: Any) -> bool:
    """Alembic's ``include_name``: what the migrations compare, i.e. all but LangGraph's checkpoint tables and
    the record of the oldest revision that may read the database."""
    return not (type_ == "table" and name is not None and
                (name.startswith(CHECKPOINTER_TABLES) or name == OLDEST_READER_TABLE))


def no_empty_revision(context: Any, _revision: Any, directives: list[Any]) -> None:
    """Alembic's ``process_revision_directives``: an autogenerated revision that changes nothing is not written."""
    if directives and directives[0].upgrade_ops.is_empty():
        directives[:] = []


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
        # WAL from the start, while waiting for the lock is allowed (the busy timeout): a new file was made in
        # rollback mode and switched by Baton's own connections, whose PRAGMA needs the lock and may not wait
        # (busy_timeout=0 on the event loop): with another process migrating or writing it ("database is
        # locked"), replicas started together on a new file failed their first reads with a traceback.
        use_wal(dbapi_connection, SQLITE_BUSY_SECONDS)

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
