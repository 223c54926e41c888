"""What a run's row says it cost people in time: the digests and /metrics add these up."""

from __future__ import annotations

from tests.support import wait_for
from tests.test_cancel import rows


def finished(database_url: str, text: str) -> tuple:
    return wait_for(lambda: next(iter(rows(database_url, "SELECT status, waited_seconds, turnaround_ms FROM runs "
                                                         f"WHERE input_text = '{text}' AND finished_at IS NOT NULL")),
                                 None), what=f"{text!r} to finish")


def test_a_card_that_expires_counts_its_wait(start_baton, database_url) -> None:
    """A card that expired after a day added nothing to the run's waited time (baton_run_waited_seconds_total,
    the digests' waited): the longest waits were the ones not counted."""
    pg = start_baton(database_url, env={"BATON_APPROVAL_EXPIRY_SECONDS": "2"}).client()
    thread = pg.ask("@baton run restart service=web")
    pg.wait_card(thread)
    pg.wait_reply(thread, "so it expired")
    status, waited, turnaround = finished(database_url, "run restart service=web")
    assert status == "failed" and 2 <= waited <= turnaround / 1000, (waited, turnaround)


def test_a_queued_request_counts_its_time_in_the_queue(start_baton, sqlite_url) -> None:
    """``run uptime`` queued behind a 2 s run was answered 2 s after it was asked, and its turnaround said
    0.1 s: requests held behind a long run looked instant on the dashboards and in the digests."""
    pg = start_baton(sqlite_url).client()
    thread = pg.ask("@baton run slow seconds=2")
    wait_for(lambda: rows(sqlite_url, "SELECT status FROM runs") == [("running",)], what="the slow run to start")
    pg.say("@baton run uptime", thread=thread)
    pg.wait_reply(thread, "did uptime")
    status, waited, turnaround = finished(sqlite_url, "run uptime")
    slow = finished(sqlite_url, "run slow seconds=2")
    assert status == "done" and waited == 0 and turnaround >= 1000, turnaround  # it waited most of the 2 s
    assert slow[2] >= 2000
