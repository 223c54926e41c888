"""Baton as an operator deploys it: its settings, its command line, its database, from the README's sections."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from storage.checkpointer import open_checkpointer
from storage.migrate import upgrade
from tests.support import ROOT, _cli_command, run_cli, wait_for


def _cli(env: dict[str, str | None], *args: str) -> Any:
    """``baton <args>`` in this process."""
    from typer.testing import CliRunner

    from bot.cli import app

    return CliRunner().invoke(app, list(args), env=env)  # type: ignore[arg-type]


def test_a_baton_yaml_that_cannot_be_looked_for_is_one_line_not_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BATON_CONFIG naming a file in a directory Baton's user may not enter (Permission denied) stopped `baton run`
    and `baton graphs` with a PermissionError traceback: looking for the file failed before it was read. A name
    too long for the file system fails the same way, as root too."""
    monkeypatch.chdir(tmp_path)
    name = "a" * 300 + ".yaml"
    result = _cli({"BATON_CONFIG": name}, "graphs")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"Baton cannot start: {name} cannot be read (BATON_CONFIG): File name too long"


def test_approvals_lists_an_expired_card_as_expired_as_the_card_says(
        tmp_path: Path, config_path: Path, migrated_sqlite: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A card nobody decided within BATON_APPROVAL_EXPIRY_SECONDS says "Expired by Baton at ..." in its thread;
    `baton approvals --all` listed it as "stale by Baton", a word Baton shows nowhere else."""
    database = tmp_path / "baton.db"
    shutil.copyfile(migrated_sqlite, database)
    with closing(sqlite3.connect(database)) as connection, connection:
        for token, status, decided_by in (("gone", "stale", "Baton"), ("yes", "approved", "bob")):
            connection.execute(
                "INSERT INTO approvals (id, run_id, thread_record_id, interrupt_id, graph, summary, details, risk, "
                "approvers, requested_by, kind, status, decided_by, decided_at, created_at) VALUES (?, 1, 1, ?, "
                "'runbook', ?, '{}', 'high', ?, 'alice', 'approval', ?, ?, '2026-12-05 01:00:00', "
                "'2026-12-05 00:00:00')", (token, token, f"Run `restart` ({token})", json.dumps(["bob"]), status,
                                           decided_by))
    monkeypatch.chdir(tmp_path)
    env = {"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": f"sqlite:///{database}"}
    result = _cli(env, "approvals", "--all")
    assert result.exit_code == 0, result.output
    rows = [re.split(r"\s{2,}", row) for row in result.stdout.splitlines()]
    assert rows[0][2] == "status", rows[0]
    statuses = {row[-1].split()[-1].strip("()"): row[2] for row in rows[1:]}
    assert statuses == {"gone": "expired by Baton", "yes": "approved by bob"}, result.stdout


def test_baton_run_on_port_0_says_which_port_it_got_when_it_serves_slack(
        tmp_path: Path, config_path: Path, sqlite_url: str) -> None:
    """README: BATON_PORT=0 is "a free port, printed". Only the playground's address line named it: a Baton serving
    Slack on port 0 printed "Baton is starting with: slack" and no port, where Slack's events are to be sent."""
    from tests.fake_slack import FakeSlack

    slack = FakeSlack().start()
    log = tmp_path / "run.log"
    env = {**os.environ, **slack.env(), "BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": sqlite_url,
           "BATON_PORT": "0", "BATON_HOST": "127.0.0.1", "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as output:
        process = subprocess.Popen([*_cli_command(env), "run"], cwd=tmp_path, env=env, stdout=output,
                                   stderr=subprocess.STDOUT)
    try:
        said = wait_for(lambda: re.search(r"^Listening on http://127\.0\.0\.1:(\d+)$", log.read_text(), re.MULTILINE)
                        or (process.poll() is not None and log.read_text()), 30, "the address line")
        assert isinstance(said, re.Match), said
        port = int(said.group(1))
        assert port != 0
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), 30, "/healthz on the port it named")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        slack.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:  # bound, not listening yet: uvicorn listens once the app has started
        return False


ADAPTER_MISTAKES = {"BATON_ADAPTERS typo": ({"BATON_ADAPTERS": "slak"}, "BATON_ADAPTERS names unknown adapters: slak"),
                    "Slack token alone": ({"SLACK_BOT_TOKEN": "xoxb-1-2-3"}, "neither SLACK_SIGNING_SECRET"),
                    "Slack tokens swapped": ({"SLACK_BOT_TOKEN": "xapp-1-A1-2-abc", "SLACK_APP_TOKEN": "xoxb-1-2-3"},
                                             "SLACK_BOT_TOKEN holds an app-level token (xapp-...), which belongs in "
                                             "SLACK_APP_TOKEN"),
                    "Slack bot token as app token": ({"SLACK_BOT_TOKEN": "xoxb-1-2-3", "SLACK_APP_TOKEN": "xoxb-1-2-3"},
                                                     "SLACK_APP_TOKEN holds an OAuth token (xoxb-...)")}


@pytest.mark.parametrize("mistake", ADAPTER_MISTAKES)
def test_an_adapter_setting_that_stops_baton_run_makes_no_database(
        tmp_path: Path, config_path: Path, mistake: str) -> None:
    """`baton run` with a typo in BATON_ADAPTERS (or a Slack token without its signing secret) made and migrated
    baton.db and baton.checkpoints.db in the working directory, then said it cannot start."""
    env, said = ADAPTER_MISTAKES[mistake]
    result = run_cli("run", cwd=tmp_path, env={**os.environ, "BATON_CONFIG": str(config_path), "BATON_PORT": "0",
                                               "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'baton.db'}", **env})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("Baton cannot start: ") and said in result.stderr, result.stderr
    assert sorted(path.name for path in tmp_path.glob("*.db")) == []


@pytest.mark.postgres
def test_an_adapter_setting_that_stops_a_replica_leaves_the_shared_database_unmigrated(
        tmp_path: Path, config_path: Path, postgres_url: str) -> None:
    """A replica of a new release started with a typo in its adapters' settings migrated the replicas' shared
    PostgreSQL database before it stopped: the old replicas, if restarted, could no longer start on it (README,
    "Upgrading": migrate first and on purpose)."""
    import psycopg

    env, said = ADAPTER_MISTAKES["BATON_ADAPTERS typo"]
    result = run_cli("run", cwd=tmp_path, env={**os.environ, "BATON_CONFIG": str(config_path), "BATON_PORT": "0",
                                               "BATON_DATABASE_URL": postgres_url, **env})
    assert result.returncode == 2 and said in result.stderr, result.stdout + result.stderr
    with psycopg.connect(postgres_url) as connection:
        tables = connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    assert tables == []


def test_an_unknown_adapter_is_named_with_the_adapters_baton_has(tmp_path: Path, config_path: Path) -> None:
    """"BATON_ADAPTERS names unknown adapters: slak" left the operator to guess what it takes (slack? Slack?)."""
    from bot.app import Baton
    from bot.settings import Settings

    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'b.db'}",  # type: ignore[call-arg]
                        BATON_ADAPTERS="slak,playground", BATON_CONFIG=str(config_path))
    with pytest.raises(ValueError) as refused:
        Baton(settings)
    assert str(refused.value) == "BATON_ADAPTERS names unknown adapters: slak (Baton has discord, playground, slack)"


@pytest.mark.parametrize("command", [["threads"], ["db", "upgrade"], ["run"]])
def test_a_sqlite_file_that_cannot_be_looked_for_is_one_line_not_a_traceback(
        tmp_path: Path, config_path: Path, command: list[str]) -> None:
    """BATON_DATABASE_URL naming a SQLite file in a directory Baton's user may not enter (Permission denied)
    stopped `baton threads`, `baton db upgrade` and `baton run` with a PermissionError traceback: looking for the
    file failed before SQLite was asked. A name too long for the file system fails the same way, as root too."""
    url = f"sqlite:///{tmp_path / ('a' * 300)}.db"
    result = run_cli(*command, cwd=tmp_path, env={**os.environ, "BATON_CONFIG": str(config_path), "BATON_PORT": "0",
                                                  "BATON_DATABASE_URL": url})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == f"Baton cannot use the database {url}: File name too long", result.stderr


def test_a_baton_db_linked_to_a_volume_that_is_not_there_names_the_missing_directory(
        tmp_path: Path, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README: baton.db may be a symlink to a data volume. With the volume not mounted, `baton db upgrade` and
    `baton run` said only SQLite's "unable to open database file", where a missing directory is named."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "baton.db").symlink_to(tmp_path / "volume" / "baton.db")
    result = _cli({"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": "sqlite:///baton.db"}, "db", "upgrade")
    assert result.exit_code == 2, result.output
    volume = tmp_path / "volume"
    assert result.stderr.strip() == (f"Baton cannot use the database sqlite:///baton.db: there is no directory "
                                     f"{volume} for it (baton.db is a link to {volume / 'baton.db'})")
    assert not (tmp_path / "volume").exists()


async def test_the_checkpoints_of_a_baton_db_linked_to_a_data_volume_are_kept_on_the_volume(tmp_path: Path) -> None:
    """README: baton.db may be a symlink to a data volume. baton.checkpoints.db was made beside the link, in the
    container's own directory: a new container found baton.db with its cards waiting and no checkpoint of their
    runs. It is beside the file the link points to, as SQLite's WAL is; one an older Baton made beside the link
    is used where it is (its runs go on)."""
    from storage.checkpointer import sqlite_checkpoint_path

    volume = tmp_path / "volume"
    volume.mkdir()
    link = tmp_path / "baton.db"
    link.symlink_to(volume / "baton.db")
    url = f"sqlite:///{link}"
    upgrade(url)
    assert sqlite_checkpoint_path(url) == volume / "baton.checkpoints.db"
    async with open_checkpointer(url):
        pass
    assert (volume / "baton.checkpoints.db").exists() and not (tmp_path / "baton.checkpoints.db").exists()
    (volume / "baton.checkpoints.db").unlink()
    (tmp_path / "baton.checkpoints.db").touch()  # where a Baton before this one made it
    assert sqlite_checkpoint_path(url) == tmp_path / "baton.checkpoints.db"


@pytest.mark.postgres
def test_a_replica_whose_role_may_not_use_a_table_a_migration_made_stops_naming_it(postgres_url: str) -> None:
    """README: replicas may run as a role granted the use of the tables, after the owner's `baton db upgrade`.
    The next upgrade (0010 made forgotten_totals) made tables for the owner alone: a replica started on it as if
    all were well, and /metrics said baton_database_up 0 for good ("permission denied for table
    forgotten_totals"). It stops at its start naming what it may not use, and the GRANT that mends it."""
    import psycopg
    from alembic.util import CommandError
    from sqlalchemy.engine import make_url

    upgrade(postgres_url, "0009")
    role = f"baton_ops_hunt_{uuid.uuid4().hex[:12]}"
    role_url = make_url(postgres_url).set(username=role, password=None).render_as_string(hide_password=False)
    grant = [f"GRANT USAGE ON SCHEMA public TO {role}", f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}",
             f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}"]
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        for statement in grant:
            admin.execute(statement)
    try:
        upgrade(postgres_url)  # the owner's, of the next release
        with pytest.raises(CommandError) as refused:
            upgrade(role_url)  # the replica's start
        assert str(refused.value).startswith(f"the role {role} may not read and write forgotten_totals: as the "
                                             f"tables' owner, GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            for statement in grant:
                admin.execute(statement)
        upgrade(role_url)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")
