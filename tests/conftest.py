from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from storage.db import Database
from storage.migrate import upgrade
from tests.support import BatonProcess, create_postgres_database, postgres_reachable, write_config

PG_SKIP_REASON = postgres_reachable()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test gets an empty database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'baton.db'}"
    else:
        yield from _fresh_postgres_database()


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """Baton's database, migrated, on each backend of ``database_url``."""
    upgrade(database_url)
    migrated = Database(database_url)
    yield migrated
    await migrated.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'baton.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _fresh_postgres_database()


def _fresh_postgres_database() -> Iterator[str]:
    if PG_SKIP_REASON:
        pytest.skip(PG_SKIP_REASON)
    url, drop = create_postgres_database()
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
