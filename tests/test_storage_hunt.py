"""Storage as an operator meets it: SQLite files Baton cannot write (the database, its directory, the
checkpoints' file), a symlinked database's WAL, replicas opening a new file together, PostgreSQL URLs with
several hosts or a line break, a role that may not create tables, a server that takes no writes, and every
migration's upgrade and downgrade with rows in every table."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlmodel import select

from storage.checkpointer import open_checkpointer
from storage.db import Database, check_url, prepared, sync_url
from storage.migrate import _migration_engine, alembic_config, upgrade
from storage.models import ThreadRecord
from tests.support import ROOT, run_cli


def baton_cli(*args: str, cwd: Path, url: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BATON_DATABASE_URL": url, "BATON_CONFIG": str(config), "BATON_PORT": "0"}
    return run_cli(*args, cwd=cwd, env=env)


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` (a file or a directory) cannot be written while inside, even by root (immutable)."""
    if os.geteuid() == 0:
        made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"cannot make {path} read-only for root: chattr +i failed: {made.stderr.strip()}")
        undo = ["chattr", "-i", str(path)]
    else:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        undo = None
    try:
        yield
    finally:
        if undo is not None:
            subprocess.run(undo, check=True)
        else:
            path.chmod(mode)


def _journal(path: Path, mode: str) -> None:
    with closing(sqlite3.connect(path)) as connection:
        assert connection.execute(f"PRAGMA journal_mode={mode}").fetchone() == (mode,)


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_a_read_only_database_file_stops_baton_with_one_line(tmp_path: Path, config_path: Path, journal: str) -> None:
    """A read-only SQLite file that was up to date passed the start's checks (``BEGIN IMMEDIATE`` succeeds on
    it, and migrating it wrote nothing): ``baton run`` stopped on a traceback ("attempt to write a readonly
    database", at the write connection's ``PRAGMA journal_mode=WAL`` or the first write), and ``baton threads``,
    which only reads, stopped on one too since it opened the write connection as well."""
    database = tmp_path / "baton.db"
    url = f"sqlite:///{database}"
    upgrade(url)
    _journal(database, journal)  # "delete": a file an older Baton migrated (this one makes it WAL)
    with read_only(database):
        started = baton_cli("run", cwd=tmp_path, url=url, config=config_path)
        assert started.returncode == 2, started.stdout + started.stderr
        assert started.stderr.strip() == f"Baton cannot use the database {url}: attempt to write a readonly database"
        upgraded = baton_cli("db", "upgrade", cwd=tmp_path, url=url, config=config_path)
        assert upgraded.returncode == 2 and "attempt to write a readonly database" in upgraded.stderr
        listed = baton_cli("threads", cwd=tmp_path, url=url, config=config_path)
    assert "Traceback" not in listed.stderr, listed.stderr
    if journal == "wal":  # nothing to write for a reader: it reads
        assert listed.returncode == 0 and "No threads yet." in listed.stdout, listed.stderr
    else:  # making it WAL is a write: one line
        assert listed.stderr.strip() == f"Baton cannot use the database {url}: attempt to write a readonly database"
    with closing(sqlite3.connect(database)) as connection:  # the write check left nothing behind
        assert not connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'baton_write_check'").fetchall()


def test_a_database_in_a_read_only_directory_stops_baton_with_one_line(tmp_path: Path, config_path: Path) -> None:
    place = tmp_path / "data"
    place.mkdir()
    url = f"sqlite:///{place / 'baton.db'}"
    upgrade(url)
    with read_only(place):
        for command in (["run"], ["threads"]):
            result = baton_cli(*command, cwd=tmp_path, url=url, config=config_path)
            assert result.returncode == 2, result.stdout
            assert result.stderr.strip() == f"Baton cannot use the database {url}: unable to open database file"


def test_a_read_only_checkpoint_file_stops_baton_with_one_line(tmp_path: Path, config_path: Path) -> None:
    """The start's check of the checkpoints' file took ``BEGIN IMMEDIATE`` for a write: a read-only
    ``baton.checkpoints.db`` passed it, and Baton's start failed later with aiosqlite's traceback."""
    url = f"sqlite:///{tmp_path / 'baton.db'}"
    checkpoints = tmp_path / "baton.checkpoints.db"
    checkpoints.touch()
    with read_only(checkpoints):
        result = baton_cli("run", cwd=tmp_path, url=url, config=config_path)
    assert result.returncode == 2, result.stdout
    assert result.stderr.strip() == (f"Baton cannot use its checkpoint database {checkpoints}: "
                                     "attempt to write a readonly database")
    with closing(sqlite3.connect(checkpoints)) as connection:
        assert not connection.execute("SELECT 1 FROM sqlite_master").fetchall()


@pytest.mark.postgres
@pytest.mark.parametrize("hosts", ["host=127.0.0.1:{port}&host=localhost:{port}", "host=127.0.0.1,localhost&port={port},{port}"])
async def test_a_postgresql_url_with_several_hosts_reaches_the_checkpointer(postgres_url: str, hosts: str) -> None:
    """libpq's failover form (SQLAlchemy's ``?host=a:5432&host=b:5432``) worked for Baton's own tables and
    stopped ``baton run`` at the checkpointer with a traceback: the hosts reached libpq as a Python tuple,
    ``host='(\\'a\\', \\'b\\')'`` ("failed to resolve host")."""
    parsed = make_url(postgres_url)
    url = f"postgresql://{parsed.username}@/{parsed.database}?" + hosts.format(port=parsed.port or 5432)
    upgrade(url)
    async with open_checkpointer(url) as saver:
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        assert await saver.aget_tuple(config) is None


@pytest.mark.parametrize("query", ["host=a&host=b&port=5432&port=5433", "host=a,b&port=1,2,3", "host=a:1&host=b:x"])
def test_several_hosts_and_ports_that_do_not_go_together_are_a_settings_error(query: str) -> None:
    """The engine refuses them (SQLAlchemy's ``ArgumentError``) at its first connection: `baton run` and
    `baton db upgrade` stopped on a traceback, not on the settings' one line."""
    with pytest.raises(ValueError, match="hosts and ports do not go together") as refused:
        check_url(f"postgresql://baton:s3cret-pass@/baton?{query}")
    assert "s3cret-pass" not in str(refused.value)


@pytest.mark.postgres
async def test_replicas_may_run_as_a_role_that_may_use_the_tables_but_not_create_any(postgres_url: str) -> None:
    """`baton db upgrade` run by the database's owner, replicas by a role granted the use of the tables only
    (PostgreSQL 15 lets no other role create tables in ``public``): every start stopped at LangGraph's setup with
    a traceback ("permission denied for schema public"), whose ``CREATE TABLE IF NOT EXISTS`` PostgreSQL refuses
    such a role even when the table is there. A start that finds them up to date leaves them be."""
    upgrade(postgres_url)
    async with open_checkpointer(postgres_url):  # the owner's first start makes them
        pass
    role = f"baton_hunt_{uuid.uuid4().hex[:12]}"
    parsed = make_url(postgres_url)
    role_url = parsed.set(username=role, password=None).render_as_string(hide_password=False)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        admin.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        admin.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), psycopg.connect(role_url) as connection:
            connection.execute("CREATE TABLE IF NOT EXISTS checkpoint_migrations (v INTEGER PRIMARY KEY)")
        upgrade(role_url)  # at its start: up to date
        async with open_checkpointer(role_url) as saver:
            config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
            assert await saver.aget_tuple(config) is None
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


async def test_durable_writes_sync_the_wal_of_a_symlinked_database(tmp_path: Path, monkeypatch) -> None:
    """``baton.db`` a symlink to a data volume: SQLite keeps the WAL beside the file the link points to (named
    after it), Baton looked for ``baton.db-wal``, found none, and took that for "nothing to sync": no durable
    write was ever synced (an acknowledged request could be lost to a power cut)."""
    (tmp_path / "volume").mkdir()
    link = tmp_path / "baton.db"
    link.symlink_to(tmp_path / "volume" / "data.db")
    url = f"sqlite:///{link}"
    upgrade(url)
    synced: list[str] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fdatasync(fd)

    monkeypatch.setattr("storage.sqlite_inline.os.fdatasync", fdatasync)
    database = Database(url)
    try:
        async with database.session() as session:
            session.add(ThreadRecord(platform="p", channel="c", thread="t", status="idle"))
    finally:
        await database.dispose()
    assert synced == [str(tmp_path / "volume" / "data.db-wal")]


async def test_a_new_database_is_read_while_another_process_holds_its_write_lock(tmp_path: Path) -> None:
    """Replicas started together on a new SQLite file: the migration made it in rollback-journal mode, and each
    connection Baton opened then switched it to WAL, which needs the lock, with no busy timeout (the event loop
    may not wait): while another process migrated or wrote, the outbox's and the sweeper's first reads failed
    with "database is locked" and a traceback. (In WAL mode a reader needs no lock.)"""
    url = f"sqlite:///{tmp_path / 'baton.db'}"
    upgrade(url)
    database = Database(url)
    try:
        with closing(sqlite3.connect(tmp_path / "baton.db", isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # another replica's write (or its migration)
            other.execute("INSERT INTO channel_pace (platform, channel, next_at) VALUES ('p', 'c', '2026-01-01')")
            assert (await database.fetch(prepared(select(ThreadRecord.id)))).all() == []
            async with database.read() as session:
                assert (await session.exec(select(ThreadRecord))).all() == []
            other.execute("COMMIT")
        async with database.session() as session:
            session.add(ThreadRecord(platform="p", channel="c", thread="t", status="idle"))
    finally:
        await database.dispose()


@pytest.mark.postgres
def test_a_postgresql_server_that_takes_no_writes_stops_the_start_with_one_line(postgres_url: str, tmp_path: Path,
                                                                                config_path: Path) -> None:
    """BATON_DATABASE_URL naming a read replica (a hot standby, ``default_transaction_read_only``): an up-to-date
    database passed the start's migration, and Baton started on it to fail every write (or stopped at LangGraph's
    setup with a traceback, "cannot execute CREATE TABLE in a read-only transaction")."""
    upgrade(postgres_url)
    name = make_url(postgres_url).database
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    result = baton_cli("run", cwd=tmp_path, url=postgres_url, config=config_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (f"Baton cannot use the database {postgres_url}: "
                                     "cannot execute UPDATE in a read-only transaction")


def _migrate(url: str, step: Callable[[Config, str], None], revision: str) -> None:
    engine = _migration_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            step(config, revision)
    finally:
        engine.dispose()


def _add_a_row_to_every_table(url: str) -> None:
    """One more row in each of Baton's tables as they are at this revision, every column given a value."""
    engine = create_engine(sync_url(url))
    tables = MetaData()
    tables.reflect(engine)
    try:
        with engine.begin() as connection:
            for table in tables.sorted_tables:
                if table.name == "alembic_version":
                    continue
                rows = connection.execute(text(f"SELECT count(*) FROM {table.name}")).scalar_one()
                values: dict[str, object] = {}
                for column in table.columns:
                    kind = str(column.type).upper()
                    if column.name == "id":
                        values[column.name] = rows + 1
                    elif column.foreign_keys:
                        values[column.name] = 1 if column.name != "inbound_id" else None
                    elif "INT" in kind:
                        values[column.name] = 7
                    elif any(word in kind for word in ("FLOAT", "REAL", "DOUBLE", "NUMERIC")):
                        values[column.name] = 1.5
                    elif "BOOL" in kind:
                        values[column.name] = True
                    elif "DATE" in kind or "TIME" in kind:
                        values[column.name] = datetime(2026, 1, 1, tzinfo=UTC)
                    elif "JSON" in kind:
                        values[column.name] = {"row": rows}
                    else:
                        values[column.name] = f"{column.name}-{rows}"
                connection.execute(table.insert().values(**values))
    finally:
        engine.dispose()


def _rows(url: str) -> dict[str, list[dict[str, str]]]:
    """Each table's rows (every column, as text), and its indexes' names."""
    engine = create_engine(sync_url(url))
    tables = MetaData()
    tables.reflect(engine)
    try:
        with engine.connect() as connection:
            found = {table.name: [{key: str(value) for key, value in row._mapping.items()}
                                  for row in connection.execute(table.select().order_by(*table.primary_key.columns))]
                     for table in tables.sorted_tables if table.name != "alembic_version"}
            indexes = inspect(connection)
            found |= {f"{name} indexes": [{index["name"]: "" for index in indexes.get_indexes(name)}]
                      for name in tables.tables}
            return found
    finally:
        engine.dispose()


def _as_at(rows: dict[str, list[dict[str, str]]], older: dict[str, list[dict[str, str]]]) -> dict[str, object]:
    """``rows`` with only the tables and columns ``older`` has (a downgrade drops the columns added after it)."""
    return {name: [{key: row[key] for key in (older[name][0] if older[name] else {})} for row in rows[name]]
            for name in older if not name.endswith(" indexes")}


def test_every_migration_keeps_the_rows_of_an_older_database_and_downgrading_and_upgrading_changes_nothing(
        database_url: str) -> None:
    """A database made by each older revision, with rows in every table: the upgrade keeps them (SQLite's batch
    migrations copy whole tables), and from head, down to each revision and up again, every row, column and
    index is as it was (but the digest tables that 0002 makes, which a downgrade below it drops)."""
    revisions = [script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()][::-1]
    for revision in revisions:
        _migrate(database_url, command.upgrade, revision)
        _add_a_row_to_every_table(database_url)
    at_head = _rows(database_url)
    assert at_head["runs"] and len(at_head["runs"]) == len(revisions)
    for revision in revisions[:-1]:
        _migrate(database_url, command.downgrade, revision)
        down = _rows(database_url)
        assert _as_at(down, down) == _as_at(at_head, down), f"down to {revision}"
        _migrate(database_url, command.upgrade, "head")
        up = _rows(database_url)
        assert _as_at(up, down) == _as_at(at_head, down), f"down to {revision} and up again"
        assert {name: value for name, value in up.items() if name.endswith(" indexes")} == \
            {name: value for name, value in at_head.items() if name.endswith(" indexes")}
        at_head = up  # the columns the downgrade dropped are back with their defaults


@pytest.mark.postgres
async def test_a_postgresql_database_has_no_sqlite_writer(postgres_url: str, tmp_path: Path, monkeypatch) -> None:
    """The SQLite writer is opened at the first write (see the read-only tests above); asked of a PostgreSQL
    database (``bench/breakdown.py`` asks ``getattr(db, "sqlite_writer", None)``) it must not make a SQLite file
    named after the PostgreSQL database."""
    monkeypatch.chdir(tmp_path)
    database = Database(postgres_url)
    try:
        assert getattr(database, "sqlite_writer", None) is None
    finally:
        await database.dispose()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("url", ["postgresql://baton:s3cret-pass@db/baton\n", "sqlite:///baton.db ", " sqlite:///baton.db"])
def test_a_database_url_with_a_line_break_or_space_around_it_is_a_settings_error(url: str) -> None:
    """A secret written with its line break (``echo ... | kubectl create secret``, a .env value quoted with one):
    PostgreSQL said 'database "baton' and the rest of its message was cut at the line break; SQLite made a file
    named ``baton.db `` beside ``baton.db``."""
    with pytest.raises(ValueError, match="begins or ends with a space or a line break") as refused:
        check_url(url)
    assert "s3cret-pass" not in str(refused.value)


def test_db_upgrade_makes_langgraphs_tables_for_replicas_that_may_not_create_any(postgres_url: str,
                                                                                  tmp_path: Path) -> None:
    """The owner migrates with `baton db upgrade`, replicas run as a role granted the use of the tables only: the
    upgrade made Baton's tables alone, so a replica's first start stopped with a traceback at LangGraph's setup
    ("permission denied for schema public"). The upgrade makes them too; a start that still cannot says so in
    one line."""
    role = f"baton_hunt_{uuid.uuid4().hex[:12]}"
    role_url = make_url(postgres_url).set(username=role, password=None).render_as_string(hide_password=False)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
    try:
        upgrade(postgres_url)  # Baton's tables only, as an older `baton db upgrade` left them
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
            admin.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
            admin.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
        started = baton_cli("run", cwd=tmp_path, url=role_url, config=ROOT / "baton.yaml")
        assert started.returncode != 0 and "Traceback" not in started.stderr, started.stderr
        assert "LangGraph's checkpoint tables: permission denied" in started.stderr, started.stderr

        upgraded = baton_cli("db", "upgrade", cwd=tmp_path, url=postgres_url, config=ROOT / "baton.yaml")
        assert upgraded.returncode == 0, upgraded.stderr  # the owner
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            assert admin.execute("SELECT to_regclass('checkpoint_migrations') IS NOT NULL").fetchone() == (True,)
            admin.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        async def first_checkpoint() -> None:
            async with open_checkpointer(role_url) as saver:  # the replica's start finds them up to date
                assert await saver.aget_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": ""}}) is None
        asyncio.run(first_checkpoint())
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")
