"""A runbook's command that runs a while says so in its thread: a low-risk runbook posted nothing before its
result, and a minute's command left the thread silent for a minute (a silent bot reads as a broken one)."""

from __future__ import annotations

from typing import Any

from tests.support import runs_in, slow_release, wait_for


def test_a_command_still_running_after_two_seconds_is_said_to_be_running(start_baton: Any, sqlite_url: str,
                                                                        counter: Any) -> None:
    pg = start_baton(sqlite_url).client()
    slow = pg.ask("@baton run slow seconds=9.9")  # until released below
    running = pg.wait_reply(slow, "Running `")
    assert running["content"]["tone"] == "progress"
    assert "(timeout 20s). Write `cancel` in this thread to stop it." in running["text"], running["text"]
    assert not [m for m in pg.bot_replies(slow) if "slept" in m["text"]]  # said while it runs, not after
    slow_release(counter).touch()
    pg.wait_reply(slow, "slept")
    texts = [m["text"] for m in pg.bot_replies(slow)]
    assert texts.index(running["text"]) < next(i for i, text in enumerate(texts) if "slept" in text), texts

    quick = pg.ask("@baton run uptime")
    pg.wait_reply(quick, "did uptime")
    assert runs_in(counter) == ["uptime"]
    assert [m["text"] for m in pg.bot_replies(quick) if "Running" in m["text"]] == []  # a quick one: its result only

