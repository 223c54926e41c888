"""A graph's own SQLite file, locked or full, is the graph's failure, not Baton's database: the run was answered
"Baton could not write to its database (database is locked) just now ... ask again", and Baton's operator was told
to see which process holds the write lock of Baton's database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bot.registry import GraphSpec
from tests.test_graph_authoring_hunt2 import _asking, _bot_texts, _runs
from tests.test_graph_modules import State, _asked


async def test_a_graphs_own_locked_sqlite_file_fails_its_run_as_the_graphs_error(tmp_path: Path, config_path) -> None:
    inventory = tmp_path / "inventory.db"
    holder = sqlite3.connect(inventory, isolation_level=None)
    holder.execute("CREATE TABLE hosts (name TEXT)")
    holder.execute("BEGIN IMMEDIATE")  # another process's write lock on the graph's own file

    def count_hosts(_state: State) -> str:
        own = sqlite3.connect(inventory, timeout=0)
        try:
            own.execute("INSERT INTO hosts VALUES ('web-1')")
            return "added"
        finally:
            own.close()

    try:
        async with _asked(tmp_path, config_path, GraphSpec(name="inventory", graph=_asking(count_hosts)),
                          "inventory") as baton:
            reply = (await _bot_texts(baton, "1", 1))[-1]
            assert "Baton could not" not in reply, reply
            assert "database is locked" in reply and "`inventory` failed" in reply, reply
            assert [(graph, status) for graph, status, _error in await _runs(baton)] == [("inventory", "failed")]
    finally:
        holder.close()
