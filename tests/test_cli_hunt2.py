"""The command line as an operator on call uses it over SSH: a database a newer Baton changed, a terminal that is
not UTF-8, tables of what people wrote."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import unicodedata
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.support import run_cli


def baton_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, env={**os.environ, **env})


@pytest.fixture
def migrated(tmp_path: Path, config_path: Path, migrated_sqlite: Path) -> tuple[Path, dict[str, str]]:
    """A SQLite database at the head (a copy of the one this worker migrated), and the environment naming it."""
    database = tmp_path / "baton.db"
    shutil.copyfile(migrated_sqlite, database)
    return database, {"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": f"sqlite:///{database}"}


@pytest.mark.parametrize("command", [["threads"], ["approvals"], ["audit"]])
def test_reading_commands_refuse_a_database_a_newer_baton_changed_past_what_they_can_read(
        tmp_path: Path, migrated: tuple[Path, dict[str, str]], command: list[str]) -> None:
    """A rolling upgrade rolled back: `baton run` refuses a database whose newer migrations changed what this Baton
    reads, but `baton threads` read it anyway and stopped on 'no such column: thread_records.title' (or showed
    what it misread), not saying a newer Baton had migrated it."""
    database, env = migrated
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("UPDATE alembic_version SET version_num = '0099'")
        connection.execute("UPDATE baton_oldest_reader SET revision = '0099'")  # a change this Baton may not read
        connection.execute("ALTER TABLE thread_records DROP COLUMN title")  # such as this
        connection.execute("ALTER TABLE approvals DROP COLUMN summary")
        connection.execute("ALTER TABLE audit_log DROP COLUMN kind")
    result = baton_cli(*command, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stdout
    assert result.stderr.strip() == (
        f"Baton cannot use the database sqlite:///{database}: the database is at revision 0099, which this Baton does "
        "not have: a newer Baton migrated it. Run that Baton (or a newer one); Baton does not downgrade.")


def test_reading_commands_read_a_database_a_newer_baton_only_added_to(
        tmp_path: Path, migrated: tuple[Path, dict[str, str]]) -> None:
    """A newer Baton's migrations that only added what this one does not read (its oldest reader is known here):
    read as it is, as `baton run` runs on it, without the migration log's warning on the terminal."""
    database, env = migrated
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("UPDATE alembic_version SET version_num = '0099'")
        connection.execute("ALTER TABLE thread_records ADD COLUMN added TEXT")
    result = baton_cli("threads", cwd=tmp_path, env=env)
    assert result.returncode == 0 and result.stdout == "No threads yet.\n", result.stderr
    assert result.stderr == ""


def _add_thread(database: Path, title: str, requested_by: str = "alice", status: str = "running",
                thread: str = "1", channel: str = "general") -> None:
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute(
            "INSERT INTO thread_records (platform, workspace, channel, thread, lg_thread_id, status, title, "
            "requested_by, created_at, updated_at) VALUES ('playground', '', ?, ?, ?, ?, ?, ?, "
            "'2026-12-05 00:00:00', '2026-12-05 00:00:00')", (channel, thread, f"lg-{thread}", status, title,
                                                              requested_by))


def test_a_terminal_that_is_not_utf8_gets_the_table_with_what_it_cannot_show_replaced(
        tmp_path: Path, migrated: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Over SSH from a terminal set to Latin-1 (LANG=de_DE.ISO-8859-1), a request with an emoji ('🔥 web is down')
    stopped `baton threads` half-way with a 60-line UnicodeEncodeError traceback: the rows after it were never
    shown. What the terminal cannot show is shown as '?'; the rest of the table as it is."""
    from typer.testing import CliRunner

    from bot.cli import app

    database, env = migrated
    _add_thread(database, "🔥 web is down, café closed", thread="1")
    _add_thread(database, "run uptime", thread="2")
    monkeypatch.chdir(tmp_path)
    result = CliRunner(charset="latin-1").invoke(app, ["threads"], env=env)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and "run uptime" in result.stdout, result.stdout
    assert "? web is down, café closed" in result.stdout


def _cli(env: dict[str, str], *args: str, charset: str = "utf-8") -> Any:
    """``baton <args>`` in this process (a reading command needs no process of its own)."""
    from typer.testing import CliRunner

    from bot.cli import app

    return CliRunner(charset=charset).invoke(app, list(args), env=env)


def test_approvals_names_a_few_who_may_approve_and_counts_the_rest(
        tmp_path: Path, migrated: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """With twelve approvers in baton.yaml (Slack ids), 'may approve' was 230 characters wide on every row, each
    row padded to it: on an 80- or 120-column terminal every card wrapped over four lines, its question far
    right. It names the first few (in about 40 characters) and counts the rest: the card names them all."""
    database, env = migrated
    approvers = [f"slack:U0{n:07d}X" for n in range(12)]
    with closing(sqlite3.connect(database)) as connection, connection:
        for token, names in (("many", approvers), ("one", ["bob"])):
            connection.execute(
                "INSERT INTO approvals (id, run_id, thread_record_id, interrupt_id, graph, summary, details, risk, "
                "approvers, requested_by, kind, status, created_at) VALUES (?, 1, 1, ?, 'runbook', ?, '{}', 'high', "
                "?, 'alice', 'approval', 'pending', '2026-12-05 00:00:00')",
                (token, token, f"Run `restart` ({token})", json.dumps(names)))
    monkeypatch.chdir(tmp_path)
    result = _cli(env, "approvals")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert len(rows) == 2 and all(len(row) < 120 for row in rows), result.stdout
    many = next(row for row in rows if " many " in row)
    assert "  slack:U00000000X, slack:U00000001X and 10 more  Run `restart` (many)" in many, many
    one = next(row for row in rows if " one " in row)
    assert one.split()[6:] == ["bob", "Run", "`restart`", "(one)"] and one.index("Run") == many.index("Run"), one


def test_graphs_says_when_there_is_no_baton_yaml_or_no_runbook_in_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`baton graphs` is how a change to baton.yaml is checked before a reload; run from the wrong directory over
    SSH (no baton.yaml there, BATON_CONFIG unset), it listed the graphs and not one runbook, with no word why,
    where `baton run` says it starts without runbooks. A baton.yaml without runbooks now says so too."""
    monkeypatch.chdir(tmp_path)
    env: dict[str, str | None] = {"BATON_CONFIG": None}
    result = _cli(env, "graphs")  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == (
        f"No baton.yaml in {tmp_path}: no runbooks or approvers (BATON_CONFIG names the file).")
    (tmp_path / "baton.yaml").write_text("approvers: [bob]\n")
    result = _cli(env, "graphs")  # type: ignore[arg-type]
    assert result.exit_code == 0 and result.stdout.splitlines()[-1] == "baton.yaml has no runbooks.", result.output


def test_threads_and_audit_show_a_failed_runs_error_without_baton_s_secrets(
        tmp_path: Path, migrated: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's error is stored as the graph raised it, a secret of the environment in it at times ('curl -H
    "Authorization: Bearer <DEPLOY_TOKEN>" ... exit code 22'). Every message and log line has it redacted, but
    `baton threads` showed its first 40 characters and `baton audit` 200 of them: output an operator pastes into
    the incident channel. Both show it as every log line does, '[redacted]'."""
    database, env = migrated
    token = "dpl-7f3a9c2e5b8d1f40"
    error = f"Authorization: {token} was refused; exit code 22"
    _add_thread(database, "run deploy", status="failed")
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute(
            "INSERT INTO runs (thread_record_id, platform, channel, graph, status, requested_by, input_text, "
            "correlation_id, started_at, waited_seconds, error) VALUES (1, 'playground', 'general', 'runbook', "
            "'failed', 'alice', 'run deploy', 'c1', '2026-12-05 00:00:00', 0, ?)", (error,))
        connection.execute(
            "INSERT INTO audit_log (at, correlation_id, kind, platform, channel, thread, user, run_id, detail) "
            "VALUES ('2026-12-05 00:00:00', 'c1', 'run.failed', 'playground', 'general', '1', 'alice', 1, ?)",
            (json.dumps({"graph": "runbook", "error": error}),))
    monkeypatch.chdir(tmp_path)
    env = {**env, "DEPLOY_TOKEN": token}
    threads, audit = _cli(env, "threads"), _cli(env, "audit", "1")
    assert threads.exit_code == 0 and audit.exit_code == 0, threads.output + audit.output
    assert "failed (Authorization: [redacted] was refused;…)" in threads.stdout, threads.stdout
    assert "error=Authorization: [redacted] was refused; exit code 22" in audit.stdout, audit.stdout
    for shown in (threads.stdout, audit.stdout):
        assert token[:8] not in shown


def test_a_traceback_of_the_command_line_never_shows_its_local_variables() -> None:
    """Typer's tracebacks showed each frame's local variables by default in the versions pyproject allows
    (typer>=0.12): an unexpected error printed `settings` and the database URL, its password in it. Set, not
    left to the installed Typer's default (this one's is off, so this test passes on the old code here)."""
    from bot.cli import app

    assert app.pretty_exceptions_show_locals is False


def _columns(text: str) -> int:
    """How many terminal columns ``text`` takes: East Asian wide characters and emoji take two."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def test_table_columns_line_up_under_names_written_in_wide_characters(
        tmp_path: Path, migrated: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A name in Japanese or with an emoji (the playground's '田中' or 'alice 🎉') takes two terminal columns a
    character, but columns were padded by characters: every later column of that row stood one column right per
    character, 'what' no longer under its header."""
    database, env = migrated
    with closing(sqlite3.connect(database)) as connection, connection:
        for token, asker in (("t1", "田中"), ("t2", "alice 🎉"), ("t3", "bob")):
            connection.execute(
                "INSERT INTO approvals (id, run_id, thread_record_id, interrupt_id, graph, summary, details, risk, "
                "approvers, requested_by, kind, status, created_at) VALUES (?, 1, 1, ?, 'deploy', 'Deploy web?', "
                "'{}', 'low', '[\"carol\"]', ?, 'approval', 'pending', '2026-12-05 00:00:00')", (token, token, asker))
    monkeypatch.chdir(tmp_path)
    result = _cli(env, "approvals")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    starts = {_columns(line[:line.index(word)]) for line, word in zip(lines, ["may approve"] + ["carol"] * 3)}
    assert len(starts) == 1, result.stdout


def test_baton_run_names_an_ipv6_address_it_cannot_listen_on_in_brackets(tmp_path: Path, config_path: Path) -> None:
    """With BATON_HOST=::1 and its port taken, `baton run` said 'cannot listen on ::1:8000', which reads as the
    address ::1:8000 on no port: an address and its port are written [::1]:8000, as the playground's is."""
    with socket.socket(socket.AF_INET6) as taken:
        taken.bind(("::1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = baton_cli("run", cwd=tmp_path, env={"BATON_CONFIG": str(config_path), "BATON_HOST": "::1",
                                                     "BATON_PORT": str(port),
                                                     "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"})
    assert result.returncode == 2, result.stdout
    assert result.stderr.strip() == (f"Baton cannot listen on [::1]:{port} (BATON_HOST, BATON_PORT): "
                                     "Address already in use")
    assert not (tmp_path / "r.db").exists()


async def test_help_without_runbooks_says_there_are_none(tmp_path: Path) -> None:
    """With no runbook in baton.yaml (none there, or Baton started in another directory), help listed the graphs
    and said nothing of `run`: whoever asked could not tell that no runbook was set up from one they had missed."""
    from tests.test_help_hunt import _answer

    config = tmp_path / "baton.yaml"
    config.write_text("approvers: [bob]\n")
    reply = await _answer(tmp_path, config, "help")
    assert "No runbooks are set up yet (`run` has nothing to run): baton.yaml lists them." in reply, reply


def test_db_upgrade_on_a_database_a_newer_baton_only_added_to_says_so(
        tmp_path: Path, migrated: tuple[Path, dict[str, str]]) -> None:
    """An older replica's `baton db upgrade` during a rolling upgrade said 'Database is at revision 0099; 'head' is
    not ahead of it, so nothing changed (Baton does not downgrade)', as if it had been asked to downgrade, after
    the migration log's line printed bare. It says the database is a newer Baton's that this one runs on."""
    database, env = migrated
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("UPDATE alembic_version SET version_num = '0099'")
    result = baton_cli("db", "upgrade", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "Database is at revision 0099, a newer Baton's: its migrations only added what this Baton does not read, so "
        "this one runs on it as it is; nothing changed."), result.stdout


def test_approvals_past_the_largest_limit_does_not_promise_to_show_them_all(
        tmp_path: Path, migrated: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """With more cards waiting than --limit takes (10,000), the hint read '--limit 10000 shows them', which shows
    10,000 of them; it says so."""
    database, _env = migrated
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.executemany(
            "INSERT INTO approvals (id, run_id, thread_record_id, interrupt_id, graph, summary, details, risk, "
            "approvers, requested_by, kind, status, created_at) VALUES (?, 1, 1, ?, 'deploy', 'Deploy?', '{}', "
            "'low', '[\"bob\"]', 'alice', 'approval', 'pending', '2026-12-05 00:00:00')",
            ((f"a{n}", f"a{n}") for n in range(10_002)))
    monkeypatch.chdir(tmp_path)
    result = _cli(_env, "approvals", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == (
        "... and 10000 older (10002 in all; --limit 10000 shows the newest 10000).")
    few = _cli(_env, "approvals", "--limit", "10000")
    assert few.stdout.splitlines()[-1] == "... and 2 older (10002 in all; --limit 10000 shows the newest 10000)."
