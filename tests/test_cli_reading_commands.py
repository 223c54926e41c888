"""The command line as the README shows it, on odd ground: no database, an empty one, a broken graph."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from bot.cli import _head_revision
from tests.conftest import PG_SKIP_REASON
from tests.support import create_postgres_database, run_cli


def baton_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, env={**os.environ, **env})


@pytest.mark.parametrize("command", [["threads"], ["approvals"], ["approvals", "--all"], ["audit"]])
def test_reading_commands_make_no_database_where_there_is_none(tmp_path, config_path, command) -> None:
    """`baton threads` in the wrong directory made baton.db and baton.checkpoints.db there and said
    "No threads yet."."""
    result = baton_cli(*command, cwd=tmp_path, env={"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": "sqlite:///baton.db"})
    assert result.returncode == 2, result.stdout
    assert "Baton cannot use the database sqlite:///baton.db: there is no such file" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.db"))


def test_reading_commands_name_a_database_of_an_older_baton(tmp_path, config_path) -> None:
    env = {"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'old.db'}"}
    assert baton_cli("db", "upgrade", "0003", cwd=tmp_path, env=env).returncode == 0
    result = baton_cli("threads", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "of an older Baton (revision 0003); `baton db upgrade`" in result.stderr
    assert baton_cli("db", "upgrade", cwd=tmp_path, env=env).returncode == 0
    assert "No threads yet." in baton_cli("threads", cwd=tmp_path, env=env).stdout


@pytest.mark.postgres
def test_reading_commands_leave_a_database_without_baton_tables_alone(tmp_path, config_path) -> None:
    """`baton threads` pointed at the wrong PostgreSQL database (``postgres`` itself) made Baton's tables there."""
    if PG_SKIP_REASON:
        pytest.skip(PG_SKIP_REASON)
    import psycopg

    url, drop = create_postgres_database()
    try:
        for command in (["threads"], ["approvals"]):
            result = baton_cli(*command, cwd=tmp_path, env={"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": url})
            assert result.returncode == 2 and "it holds no Baton tables" in result.stderr, result.stderr
        with psycopg.connect(url) as connection:
            tables = connection.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert tables == (0,)
    finally:
        drop()


def test_a_graph_module_that_fails_to_import_is_one_line_and_nothing_starts(tmp_path, config_path) -> None:
    """A graph module with a broken import was a 50-line traceback, after `baton run` had made its database."""
    graphs = tmp_path / "graphs"  # `python -m bot.cli` in this directory finds this package first
    graphs.mkdir()
    (graphs / "__init__.py").write_text("")
    (graphs / "deploy.py").write_text("import os\nimport no_such_library_here\n")
    env = {**os.environ, "BATON_CONFIG": str(config_path), "BATON_PORT": "0",
           "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"}
    env.pop("PYTHONPATH", None)
    for command in ("graphs", "run"):  # the fork server's child, too, has its working directory first on sys.path
        result = run_cli(command, cwd=tmp_path, env=env)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == (
            f"Baton cannot load its graphs: the graph module graphs.deploy cannot be imported ({graphs / 'deploy.py'}, "
            "line 2): ModuleNotFoundError: No module named 'no_such_library_here'")
    assert not list(tmp_path.glob("*.db"))


def test_db_upgrade_says_what_the_database_is_at(tmp_path, config_path) -> None:
    """`baton db upgrade base` (or an older revision) changes nothing, and said "Database migrated to 'base'."."""
    env = {"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'up.db'}"}
    assert baton_cli("db", "upgrade", "0002", cwd=tmp_path, env=env).stdout.strip() == "Database is at revision 0002."
    assert baton_cli("db", "upgrade", "0001", cwd=tmp_path, env=env).stdout.strip() == (
        "Database is at revision 0002; '0001' is not ahead of it, so nothing changed (Baton does not downgrade).")
    head = _head_revision()
    # What it did: the same words for a migration and for nothing done left an operator pointed at a database
    # someone had migrated already unable to tell.
    assert baton_cli("db", "upgrade", cwd=tmp_path, env=env).stdout.strip() == (
        f"Database migrated from revision 0002 to {head}: up to date.")
    assert baton_cli("db", "upgrade", cwd=tmp_path, env=env).stdout.strip() == (
        f"Database is up to date (revision {head}): nothing to do.")
    said = baton_cli("db", "upgrade", "base", cwd=tmp_path, env=env).stdout.strip()
    assert said.startswith("Database is up to date (revision ") and "'base' is not ahead of it" in said
    fresh = {**env, "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}"}
    assert baton_cli("db", "upgrade", cwd=tmp_path, env=fresh).stdout.strip() == (
        f"Database made at revision {head} (it held no Baton tables): up to date.")


def test_run_on_a_database_a_newer_baton_migrated_is_one_line(tmp_path, config_path) -> None:
    """A rolling upgrade rolled back: `baton run` on a database at a revision this Baton does not have printed a
    53-line traceback; `baton db upgrade` already said what it was."""
    import sqlite3
    from contextlib import closing

    database = tmp_path / "newer.db"
    env = {"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": f"sqlite:///{database}", "BATON_PORT": "0"}
    assert baton_cli("db", "upgrade", cwd=tmp_path, env=env).returncode == 0
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("UPDATE alembic_version SET version_num = '0099'")
        connection.execute("UPDATE baton_oldest_reader SET revision = '0099'")  # a change this Baton may not read
    result = baton_cli("run", cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"Baton cannot use the database sqlite:///{database}: the database is at revision 0099, which this Baton does "
        "not have: a newer Baton migrated it. Run that Baton (or a newer one); Baton does not downgrade.")


def test_threads_shows_what_people_wrote_without_its_terminal_control_codes(tmp_path, config_path) -> None:
    """A request holding an escape sequence (OSC 52 writes the reader's clipboard in some terminals) reached
    the terminal of whoever ran `baton threads` as it was."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    env = {"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": url}
    assert baton_cli("db", "upgrade", cwd=tmp_path, env=env).returncode == 0
    with closing(sqlite3.connect(tmp_path / "c.db")) as connection, connection:
        connection.execute(
            "INSERT INTO thread_records (platform, workspace, channel, thread, lg_thread_id, status, title, "
            "requested_by, created_at, updated_at) VALUES ('playground', '', 'general', '1', 'lg', 'failed', ?, "
            "'mallory', '2026-12-05 00:00:00', '2026-12-05 00:00:00')", ("run nosuch \x1b]52;c;ZWNobyBoaQ==\x07",))
    result = baton_cli("threads", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "run nosuch \ufffd]52;c;ZWNobyBoaQ==\ufffd" in result.stdout


def test_audit_shows_a_request_from_its_event_to_its_effect(baton, tmp_path, config_path, database_url) -> None:
    pg = baton.client()
    thread = pg.ask("@baton run restart service=web")
    pg.click(pg.wait_card(thread), "alice")  # refused: she asked for it
    pg.click(pg.wait_card(thread), "bob")
    pg.wait_reply(thread, "did restart web")
    pg.wait_reply(pg.ask("@baton run uptime"), "did uptime")
    env = {"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": database_url}
    result = baton_cli("audit", thread, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()[1:]]
    request = lines[0][2]  # its correlation id; each click is an event of its own
    story = [line[3] for line in lines if line[2] == request]
    assert story == ["request.received", "run.started", "approval.requested", "approval.refused", "approval.approved",
                     "effect.started", "effect.done", "run.done"], result.stdout
    approved = next(line for line in lines if line[3] == "approval.approved")
    click = next(line for line in lines if line[3] == "click.received" and line[4] == "bob")
    assert approved[4] == "bob" and f"click={click[2]}" in " ".join(approved)  # the click that decided it
    assert "effect=command" in result.stdout and "uptime" not in result.stdout  # only this thread's entries

    whole = baton_cli("audit", f"playground/general/{thread}", cwd=tmp_path, env=env).stdout
    assert whole == result.stdout
    by_request = baton_cli("audit", request, cwd=tmp_path, env=env).stdout.splitlines()[1:]
    assert [line.split()[3] for line in by_request] == story  # the request's own entries, by its correlation id
    latest = baton_cli("audit", "--limit", "3", cwd=tmp_path, env=env).stdout.splitlines()
    assert len(latest) == 4 and latest[-1].split()[3] == "run.done"  # a header and the last three, oldest first
    nothing = baton_cli("audit", "no-such-thread", cwd=tmp_path, env=env)
    assert nothing.returncode == 0 and "Nothing in the audit log for no-such-thread." in nothing.stdout
