"""Where a SQLite Baton keeps LangGraph's checkpoints."""

from __future__ import annotations

import asyncio

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from storage.checkpointer import open_checkpointer, sqlite_checkpoint_path


@pytest.mark.asyncio
async def test_checkpoints_get_a_file_of_their_own_beside_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'baton.db'}"
    assert sqlite_checkpoint_path(url) == tmp_path / "baton.checkpoints.db"
    async with open_checkpointer(url) as checkpointer:
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        assert await checkpointer.aget_tuple(config) is None
    assert (tmp_path / "baton.checkpoints.db").exists()
    assert not (tmp_path / "baton.db").exists()  # the checkpointer never touched Baton's own file


def test_a_database_that_already_holds_checkpoints_keeps_them(tmp_path: Path) -> None:
    database = tmp_path / "baton.db"
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("CREATE TABLE checkpoints (thread_id TEXT)")
        connection.execute("INSERT INTO checkpoints VALUES ('a run waiting for approval')")
    assert sqlite_checkpoint_path(f"sqlite:///{database}") == database

    empty = tmp_path / "fresh.db"
    with closing(sqlite3.connect(empty)) as connection, connection:
        connection.execute("CREATE TABLE checkpoints (thread_id TEXT)")
    assert sqlite_checkpoint_path(f"sqlite:///{empty}") == tmp_path / "fresh.checkpoints.db"


async def test_replicas_starting_together_on_a_new_postgresql_database_all_get_a_checkpointer(postgres_url: str) -> None:
    """LangGraph's setup creates its tables unguarded: two replicas starting together collided on them
    (a unique violation: one replica did not start)."""

    async def start() -> str:
        async with open_checkpointer(postgres_url) as saver:
            return type(saver).__name__

    started = await asyncio.wait_for(asyncio.gather(*(start() for _ in range(4)), return_exceptions=True), 60)
    assert started == ["AsyncPostgresSaver"] * 4
