"""``cancel`` in a run's thread stops the run: a runaway command no longer has to run out its timeout.

Written in a busy thread, a request waits for the run to end; ``cancel`` must not, and it must reach the run
on whichever replica runs it. Who asked for the run, or an approver of it, may cancel it; anyone else is told.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support import alive, runs_in, wait_for, write_config

SLEEPY = """
  sleepy:
    description: Writes its pid, then sleeps.
    command: [{python!r}, "-c", "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); print('asleep', flush=True); time.sleep(120); print('woke up')", {pidfile!r}]
    risk: low
    timeout: 300
"""


@pytest.fixture
def config_path(tmp_path: Path, counter: Path) -> Path:
    config = write_config(tmp_path, counter)
    config.write_text(config.read_text().replace("runbooks:\n", "runbooks:" + SLEEPY.format(
        python=sys.executable, pidfile=str(tmp_path / "sleepy.pid")), 1))
    return config


def started_sleeping(tmp_path: Path) -> int:
    pidfile = tmp_path / "sleepy.pid"
    return int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="the command to start"))


def rows(database_url: str, query: str) -> list[tuple]:
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as connection:
            return connection.execute(query).fetchall()
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(query))]
    finally:
        engine.dispose()


def test_the_requester_cancels_a_running_command_and_anyone_else_is_told_who_may(
        start_baton, database_url, tmp_path) -> None:
    pg = start_baton(database_url).client()
    thread = pg.ask("@baton run sleepy", user="alice")
    pid = started_sleeping(tmp_path)

    pg.say("cancel", thread=thread, user="carol")  # neither who asked nor an approver
    pg.wait_reply(thread, "Only alice, who asked for it, or bob can cancel this run. It goes on.", viewer="carol")
    assert alive(pid)

    pg.say("@baton cancel", thread=thread, user="alice")
    pg.wait_reply(thread, "alice cancelled `run sleepy` after")
    wait_for(lambda: not alive(pid), what="the command to be killed")
    # Once, under six test workers on two cores, a "Queued" note was there: the thread's messages then say whose
    unexpected = [m["text"][:120] for m in pg.bot_replies(thread) if "woke up" in m["text"] or "Queued" in m["text"]]
    assert unexpected == [], [(m["user"], m["text"][:80]) for m in pg.replies(thread)]
    assert rows(database_url, "SELECT status, error FROM runs") == [("failed", "cancelled by alice")]
    effects = rows(database_url, "SELECT status FROM effects")
    assert effects == [("failed",)]  # cut off by the cancel: not left in doubt
    kinds = rows(database_url, "SELECT kind, \"user\" FROM audit_log WHERE kind LIKE 'run.cancel%' ORDER BY id")
    assert kinds == [("run.cancel_refused", "carol"), ("run.cancelled", "alice")]
    assert rows(database_url, "SELECT count(*) FROM inbound_events WHERE status = 'pending'") == [(0,)]

    pg.say("run uptime", thread=thread, user="alice")  # the thread goes on as any other
    pg.wait_reply(thread, "did uptime")


def test_an_approver_may_cancel_and_a_cancel_with_nothing_running_says_so(start_baton, sqlite_url, tmp_path) -> None:
    pg = start_baton(sqlite_url).client()
    thread = pg.ask("@baton run sleepy", user="carol")
    pid = started_sleeping(tmp_path)
    pg.say("cancel the standup, I'm on this", thread=thread, user="carol")  # people talking: no cancel
    pg.say("@baton force cancel", thread=thread, user="bob")
    pg.wait_reply(thread, "bob cancelled `run sleepy`")
    wait_for(lambda: not alive(pid), what="the command to be killed")
    wait_for(lambda: rows(sqlite_url, "SELECT count(*) FROM inbound_events WHERE status = 'pending'") == [(0,)],
             what="the talk behind the run to be handled")
    assert rows(sqlite_url, "SELECT outcome FROM inbound_events WHERE text LIKE 'cancel the standup%'") == \
        [("conversation",)]  # handled after the run, without an answer

    pg.say("cancel", thread=thread, user="carol")
    pg.wait_reply(thread, "Nothing is running in this thread, so there is nothing to cancel.")
    top = pg.ask("@baton cancel", user="carol")
    pg.wait_reply(top, "`cancel` stops a run that is going on: write it in that run's thread.")


def test_a_cancel_at_an_approval_card_withdraws_it(start_baton, sqlite_url, counter) -> None:
    pg = start_baton(sqlite_url).client()
    thread = pg.ask("@baton run restart service=web", user="alice")
    card = pg.wait_card(thread)
    pg.say("cancel", thread=thread, user="carol")  # not hers to decide
    pg.wait_reply(thread, "Only alice, who asked for it, or bob can cancel this run.", viewer="carol")  # asked to cancel, not to decide
    pg.say("cancel", thread=thread, user="alice")
    pg.wait_reply(thread, "alice")
    edited = wait_for(lambda: next((m for m in pg.bot_replies(thread) if m["id"] == card["id"]
                                    and m["revision"] > 1), None), what="the card to be decided")
    assert "Rejected by alice" in edited["text"] or "Withdrawn by alice" in edited["text"], edited["text"]
    assert pg.click(card, "bob").status_code == 400  # decided: the card has no buttons any more
    assert runs_in(counter) == []


@pytest.mark.postgres
def test_a_cancel_sent_to_another_replica_reaches_the_run(start_baton, postgres_url, tmp_path) -> None:
    one, two = start_baton(postgres_url, name="one"), start_baton(postgres_url, name="two")
    thread = one.client().ask("@baton run sleepy", user="alice")  # a new thread is drained where it was made
    pid = started_sleeping(tmp_path)
    assert two.client().say("cancel", thread=thread, user="alice").status_code == 201
    two.client().wait_reply(thread, "alice cancelled `run sleepy`")
    wait_for(lambda: not alive(pid), what="the command to be killed")
    assert "was cancelled by alice" in one.log.read_text()
