from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy.engine import make_url

from storage.checkpointer import open_checkpointer
from storage.db import Database
from storage.migrate import upgrade
from tests.support import LATER_DROPS, BatonProcess, create_postgres_database, postgres_reachable, write_config

PG_SKIP_REASON = postgres_reachable()

# Property tests draw the same examples on every run (derandomize): a red CI is then a defect to find, never a
# roll of the dice, and a failure found once is found again. No deadline: two cores shared with other tests.
settings.register_profile("baton", derandomize=True, deadline=None, database=None, max_examples=200,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("baton")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test gets an empty database: a SQLite file, or a fresh PostgreSQL database. A test that asks for
    ``database`` gets it migrated: a copy of one this worker migrated once (0.2 s / 0.5-1 s less a test); so does
    one that asks for ``baton`` (its ``baton run`` finds nothing to migrate). A PostgreSQL one is dropped while the
    next tests run (``LATER_DROPS``)."""
    migrated = "database" in request.fixturenames or "baton" in request.fixturenames
    if request.param == "sqlite":
        path = tmp_path / "baton.db"
        if migrated:
            shutil.copyfile(request.getfixturevalue("migrated_sqlite"), path)
        yield f"sqlite:///{path}"
    else:
        if PG_SKIP_REASON:
            pytest.skip(PG_SKIP_REASON)
        yield from _fresh_postgres_database(request.getfixturevalue("migrated_postgres") if migrated else None,
                                            drop_later=True)


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to the head (its WAL checkpointed into it when the migration's engine closed)."""
    path = tmp_path_factory.mktemp("migrated") / "baton.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def migrated_postgres() -> Iterator[str]:
    """The name of a PostgreSQL database migrated to the head, LangGraph's checkpoint tables made too, the template
    of ``database``'s (nobody connects to it after the migration: PostgreSQL copies a template only then)."""
    if PG_SKIP_REASON:
        pytest.skip(PG_SKIP_REASON)
    url, drop = create_postgres_database()
    try:
        upgrade(url)
        asyncio.run(_checkpoint_tables(url))
        yield str(make_url(url).database)
    finally:
        drop()


async def _checkpoint_tables(url: str) -> None:
    async with open_checkpointer(url):
        pass


@pytest.fixture(scope="session", autouse=True)
def postgres_databases_dropped() -> Iterator[None]:
    """Every test database dropped later (``LATER_DROPS``) is dropped by the end of the session."""
    yield
    LATER_DROPS.wait()


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """Baton's database, migrated (``database_url`` copied it from a migrated one), on each backend."""
    migrated = Database(database_url)
    yield migrated
    await migrated.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'baton.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _fresh_postgres_database()


def _fresh_postgres_database(template: str | None = None, *, drop_later: bool = False) -> Iterator[str]:
    if PG_SKIP_REASON:
        pytest.skip(PG_SKIP_REASON)
    url, drop = create_postgres_database(template, drop_later=drop_later)
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def counter(tmp_path: Path) -> Path:
    return tmp_path / "executions.txt"


@pytest.fixture
def config_path(tmp_path: Path, counter: Path) -> Path:
    return write_config(tmp_path, counter)


@pytest.fixture
def start_baton(tmp_path: Path, config_path: Path) -> Iterator:
    """Start ``baton run`` processes; every one is stopped at the end of the test."""
    started: list[BatonProcess] = []

    def start(database_url: str, name: str = "baton", env: dict[str, str] | None = None) -> BatonProcess:
        process = BatonProcess(database_url, config_path, tmp_path, name, env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def baton(start_baton, database_url: str) -> BatonProcess:
    return start_baton(database_url)


@pytest.fixture(autouse=True)
def no_baton_left_running() -> Iterator[None]:
    """Stop every ``baton run`` a test started and left running. A test that starts one itself and asserts its
    way to the end (test_upgrade_hunt's new Baton on SQLite) left it running after the suite: a fork server's
    child has no parent to end it, and one was found alive two hours later, still holding its test's files.
    One a module's fixture started (set up before this fixture, pytest sets wider scopes up first) stays."""
    before = set(BatonProcess.running)
    yield
    for process in BatonProcess.running - before:
        process.stop()
