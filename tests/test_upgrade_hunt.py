"""Upgrading Baton from the code of commit 99e3391 (migrations up to 0008) to this one (0009 and later) keeps the work.

Real processes: the old code is exported with ``git archive`` and started from its own directory, by its own
``tests.forkserver`` (which imported the old code: each start is a fork, not Python's start-up and the old code's
imports again); the new code is this tree. On SQLite and PostgreSQL: an old Baton leaves a run waiting at
its card, a request queued behind it, a chat-made digest schedule and outbox rows stored the old code's way;
it is stopped (SIGTERM) and the new code started on the same database migrates it, resumes the run once at
the old card's click, runs the queued request, fires the digest and delivers the rows once. On PostgreSQL,
a rolling deploy: an old replica keeps serving beside a new one (and ``baton db upgrade``) on the migrated
schema, each event handled once.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text, update

from storage.db import sync_url
from storage.migrate import alembic_config
from storage.models import DigestSchedule, utcnow
from tests.support import ROOT, BatonProcess, run_cli, runs_in, wait_for

OLD_COMMIT = "99e3391"  # the code before migration 0009 (playground_messages' thread index)
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()  # this tree's: 0009 and every later one
# Run by the old code: outbox rows stored its way (Outbox.enqueue), as a Baton stopped before sending them left them.
ENQUEUE = """
import asyncio, sys
from bot.messages import Location, Message
from bot.outbox import Outbox
from storage.db import Database

async def main(url, channel, thread, texts):
    db = Database(url)
    try:
        async with db.session() as session:
            for text in texts:
                await Outbox(db, worker="old").enqueue(
                    session, Location(platform="playground", channel=channel, thread=thread), Message.text(text))
    finally:
        await db.dispose()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
"""


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The old code, exported from git; skipped where the history does not hold it (a shallow clone)."""
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", OLD_COMMIT], capture_output=True, timeout=60)
    except FileNotFoundError:
        pytest.skip("git is not installed: the old code cannot be exported")
    if archive.returncode != 0:
        pytest.skip(f"commit {OLD_COMMIT} is not in this clone (shallow?): {archive.stderr.decode().strip()}")
    directory = tmp_path_factory.mktemp("old-baton")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(directory, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # 3.11.4+
    return directory


def old_baton(old_tree: Path, url: str, config: Path, name: str = "old") -> BatonProcess:
    """``baton run`` of the old code: its directory first on sys.path (its own fork server, not ours)."""
    return BatonProcess(url, config, old_tree, name, env={"PYTHONPATH": str(old_tree)}, code=old_tree)


def old_enqueue(old_tree: Path, url: str, channel: str, thread: str, *texts: str) -> None:
    """Outbox rows stored by the old code's Outbox.enqueue (no Baton delivering them)."""
    done = subprocess.run([sys.executable, "-c", ENQUEUE, url, channel, thread, *texts], cwd=old_tree,
                          env={"PYTHONPATH": str(old_tree), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def sql(url: str, query: str, **params: object) -> list[tuple]:
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as connection:
            result = connection.execute(text(query), params)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def backdate_schedules(url: str, by: timedelta) -> None:
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as connection:
            connection.execute(update(DigestSchedule).values(created_at=utcnow() - by))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


def test_the_new_code_takes_over_an_old_batons_database_with_its_work(old_tree: Path, any_url: str, tmp_path: Path,
                                                                    counter: Path, config_path: Path) -> None:
    old = old_baton(old_tree, any_url, config_path).start()
    try:
        chat = old.client()
        waiting = chat.ask("@baton run restart service=web", user="alice")
        card = chat.wait_card(waiting)
        chat.say("run uptime", thread=waiting, user="alice")  # queued behind the waiting run
        chat.wait_reply(waiting, "Queued")
        schedule = chat.ask("@baton digest daily 06:00 UTC", channel="ops", user="carol")
        chat.wait_reply(schedule, "06:00")
        busy = chat.ask("@baton run slow seconds=1.5", user="dave")  # under way when the old one is told to stop
        wait_for(lambda: sql(any_url, "SELECT count(*) FROM runs WHERE status = 'running'") == [(1,)], 10, "the run")
    finally:
        old.stop()
    assert runs_in(counter) == []
    # The schedule was made two days ago: its missed firings are one catch-up digest at the next start.
    backdate_schedules(any_url, timedelta(days=2))
    old_enqueue(old_tree, any_url, "general", waiting, "left in the outbox 1", "left in the outbox 2")
    assert sql(any_url, "SELECT version_num FROM alembic_version") == [("0008",)]

    new = BatonProcess(any_url, config_path, tmp_path, "new").start()
    chat = new.client()
    assert sql(any_url, "SELECT version_num FROM alembic_version") == [(HEAD,)]
    chat.wait_reply(waiting, "left in the outbox 2")
    assert chat.click(card, "bob").status_code in (200, 202)
    chat.wait_reply(waiting, "did uptime")
    again = chat.click(card, "bob")
    assert again.status_code == 400 and "decided" in again.text  # the card was edited: its buttons are gone
    wait_for(lambda: sql(any_url, "SELECT count(*) FROM digest_runs WHERE status = 'posted'") == [(1,)], 20,
             "the catch-up digest")
    texts = [m["text"] for m in chat.bot_replies(waiting)]
    assert sum("left in the outbox 1" in t for t in texts) == 1 and sum("left in the outbox 2" in t for t in texts) == 1
    assert sorted(runs_in(counter)) == ["restart web", "uptime"]
    assert sum("slept" in m["text"] for m in chat.bot_replies(busy)) == 1  # finished in the old one's grace


@pytest.mark.postgres
def test_a_rolling_deploy_serves_from_an_old_and_a_new_replica_on_one_migrated_database(
        old_tree: Path, postgres_url: str, tmp_path: Path, counter: Path, config_path: Path) -> None:
    old = old_baton(old_tree, postgres_url, config_path).start()
    old_chat = old.client()
    first = old_chat.ask("@baton run restart service=web", user="alice")
    old_card = old_chat.wait_card(first)

    # The owner runs the new code's `baton db upgrade` while the old replica serves, then starts new replicas.
    upgraded = run_cli("db", "upgrade", cwd=tmp_path, env={**os.environ, "BATON_DATABASE_URL": postgres_url,
                                                           "BATON_CONFIG": str(config_path)})
    assert upgraded.returncode == 0, upgraded.stderr
    assert sql(postgres_url, "SELECT version_num FROM alembic_version") == [(HEAD,)]
    during = old_chat.ask("@baton run restart service=worker", user="alice")
    old_chat.wait_card(during)
    new = BatonProcess(postgres_url, config_path, tmp_path, "new").start()
    new_chat = new.client()

    second = new_chat.ask("@baton run restart service=api", user="alice")
    new_card = new_chat.wait_card(second)
    assert old_chat.click(new_card, "bob").status_code in (200, 202)  # the new replica's card, decided on the old
    assert new_chat.click(old_card, "bob").status_code in (200, 202)  # and the old one's on the new
    new_chat.wait_reply(first, "did restart web")
    old_chat.wait_reply(second, "did restart api")
    # The same event delivered to both replicas, on either side: handled once.
    for one, other, request, answer in [(old_chat, new_chat, "run uptime", "did uptime"),
                                        (new_chat, old_chat, "run slow seconds=0.1", "slept")]:
        event = f"both-{uuid.uuid4().hex}"
        thread = one.ask(f"@baton {request}", user="carol", event_id=event)
        assert other.say(f"@baton {request}", user="carol", event_id=event).json()["delivery"] == "duplicate"
        one.wait_reply(thread, answer)
    old_enqueue(old_tree, postgres_url, "general", first, "from the old code's outbox")
    new_chat.wait_reply(first, "from the old code's outbox")
    assert old.process is not None and old.process.poll() is None, "the old replica stopped beside the migrated schema"
    # An old replica that restarts now (a crash, a drain, a rolled-back deploy) refuses the database: upgrade order.
    restarted = run_cli("run", cwd=old_tree, code=old_tree,
                        env={**os.environ, "PYTHONPATH": str(old_tree), "BATON_DATABASE_URL": postgres_url,
                             "BATON_CONFIG": str(config_path), "BATON_PORT": "0"})
    assert restarted.returncode != 0 and "a newer Baton migrated it" in restarted.stdout + restarted.stderr
    assert sorted(runs_in(counter)) == ["restart api", "restart web", "uptime"]
    assert sum("from the old code's outbox" in m["text"] for m in new_chat.bot_replies(first)) == 1
