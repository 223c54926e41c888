"""``baton threads`` counts each listed thread's messages the platform refused for good: on a database of years, whose
outbox keeps every failed row (retention is off by default), that count reads the listed threads' rows, not every
failed row of the platform or every row of the listed threads' channels."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from tests.test_cli_hunt2 import _add_thread, _cli, migrated  # noqa: F401 (a fixture)


def _add_failed(database: Path, thread: str, count: int, channel: str = "general") -> None:
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.executemany(
            "INSERT INTO outbox (platform, workspace, channel, thread, kind, payload, status, attempts, "
            "next_attempt_at, error, created_at) VALUES ('playground', '', ?, ?, 'post', '{}', 'failed', 1, "
            "'2026-12-05 00:00:00', 'chat.postMessage: not_in_channel', '2026-12-05 00:00:00')",
            [(channel, thread)] * count)


def test_threads_counts_undelivered_messages_through_the_threads_index(
        tmp_path: Path, migrated: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    database, env = migrated
    _add_thread(database, "run uptime", thread="1", status="done")
    _add_failed(database, "1", 2)
    _add_failed(database, "other", 50)  # a thread not listed, in the same channel
    _add_failed(database, "9", 50, channel="elsewhere")
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if "outbox" in statement:
            statements.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        monkeypatch.chdir(tmp_path)
        result = _cli(env, "threads")
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
    assert result.exit_code == 0, result.output
    assert "done; 2 messages not delivered (chat.postMessage: not_in_channel)" in result.stdout, result.stdout
    [(statement, parameters)] = statements
    with closing(sqlite3.connect(database)) as connection:
        plan = " ".join(row[-1] for row in connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters))
    # Before: by (platform=? AND channel=?), every row of the channel (on PostgreSQL: every failed one of the platform)
    assert "SCAN outbox" not in plan and "thread=?" in plan, plan
