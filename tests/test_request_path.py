"""End to end through the playground HTTP API against a real ``baton run`` process."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support import ON_SQLITE_ONLY, runs_in, wait_for


def test_low_risk_runbook_runs_at_once(baton, counter):
    pg = baton.client()
    thread = pg.ask("@baton run uptime")
    reply = pg.wait_reply(thread, "did uptime")
    assert reply["content"]["tone"] == "success"
    assert any(part["kind"] == "code" and "did uptime" in part["text"] for part in reply["content"]["parts"])
    assert runs_in(counter) == ["uptime"]


def test_high_risk_runbook_approved(baton, counter):
    pg = baton.client()
    thread = pg.ask("@baton run restart service=web")
    pg.wait_reply(thread, "Plan: run")
    card = pg.wait_card(thread)
    assert "restart web" in card["text"] and runs_in(counter) == []
    assert "approvers: bob (not alice, who asked)" in card["text"]  # alice may only withdraw it
    assert pg.click(card, "bob").status_code == 202
    pg.wait_reply(thread, "did restart web")
    edited = wait_for(lambda: next(m for m in pg.bot_replies(thread) if m["id"] == card["id"] and m["revision"] > 1),
                      what="the card to be edited")
    assert "Approved by bob at" in edited["text"]
    assert not any(part["kind"] == "buttons" for part in edited["content"]["parts"])
    assert runs_in(counter) == ["restart web"]


def test_high_risk_runbook_rejected(baton, counter):
    pg = baton.client()
    thread = pg.ask("@baton run restart service=api")
    card = pg.wait_card(thread)
    pg.click(card, "bob", action="reject")
    rejected = pg.wait_reply(thread, "Rejected by bob: nothing was run")
    assert rejected["content"]["tone"] == "info"  # not "success"
    edited = next(m for m in pg.bot_replies(thread) if m["id"] == card["id"])
    assert "Rejected by bob at" in edited["text"]
    assert runs_in(counter) == []


@ON_SQLITE_ONLY
def test_unauthorised_and_self_approval_are_refused(baton, counter):
    pg = baton.client()
    thread = pg.ask("@baton run restart service=web", user="alice")
    card = pg.wait_card(thread)
    pg.click(card, "carol")
    refusal = pg.wait_reply(thread, "Only bob can approve this", viewer="carol")  # as the card lists them
    assert refusal["ephemeral"]
    pg.click(card, "alice")
    own = pg.wait_reply(thread, "You asked for this high-risk action", viewer="alice")
    assert own["ephemeral"]
    # Refusals are shown only to the person who clicked, and change nothing.
    assert not any("Only bob can" in m["text"] for m in pg.bot_replies(thread, viewer="bob"))
    current = next(m for m in pg.bot_replies(thread) if m["id"] == card["id"])
    assert current["revision"] == 1 and runs_in(counter) == []
    pg.click(card, "bob")
    pg.wait_reply(thread, "did restart web")
    assert runs_in(counter) == ["restart web"]


@ON_SQLITE_ONLY
def test_the_requester_may_withdraw_a_high_risk_request_by_rejecting_it(baton, counter):
    pg = baton.client()
    thread = pg.ask("@baton run restart service=worker", user="carol")  # carol is no approver
    card = pg.wait_card(thread)
    assert pg.click(card, "carol", action="reject").status_code == 202
    pg.wait_reply(thread, "Rejected by carol: nothing was run")
    edited = next(m for m in pg.bot_replies(thread) if m["id"] == card["id"])
    assert "Rejected by carol at" in edited["text"] and runs_in(counter) == []


def test_same_click_twice_and_ten_clicks_at_once_resume_once(baton, counter):
    pg = baton.client()
    thread = pg.ask("@baton run restart service=worker")
    card = pg.wait_card(thread)
    first = pg.click(card, "bob", event_id="click-1")
    again = pg.click(card, "bob", event_id="click-1")
    assert (first.json()["delivery"], again.json()["delivery"]) == ("accepted", "duplicate")

    other = pg.ask("@baton run restart service=api")
    other_card = pg.wait_card(other)
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda n: pg.click(other_card, "bob" if n % 2 else "alice" if n == 0 else "bob",
                                                   event_id=f"burst-{n}"), range(10)))
    assert all(answer.status_code in (202, 400) for answer in answers)
    pg.wait_reply(thread, "did restart worker")
    pg.wait_reply(other, "did restart api")
    assert sorted(runs_in(counter)) == ["restart api", "restart worker"]
    finals = [m for m in pg.bot_replies(other) if "did restart api" in m["text"]]
    assert len(finals) == 1


def test_click_after_restart_resumes_the_run(start_baton, database_url, counter):
    first = start_baton(database_url, name="before")
    pg = first.client()
    thread = pg.ask("@baton run restart service=web")
    card = pg.wait_card(thread)
    first.stop()

    second = start_baton(database_url, name="after")
    pg = second.client()
    assert pg.click(card, "bob").status_code == 202
    pg.wait_reply(thread, "did restart web")
    assert runs_in(counter) == ["restart web"]


def test_follow_up_in_a_busy_thread_is_queued_in_order(baton, counter):
    pg = baton.client()
    thread = pg.ask("@baton run slow seconds=1.5")
    pg.say("run uptime", thread=thread)
    pg.say("run disk-does-not-exist", thread=thread)
    pg.wait_reply(thread, "Queued: I'll handle this after the current run")
    last = pg.wait_reply(thread, "I don't know a runbook called `disk-does-not-exist`")
    texts = [m["text"] for m in pg.bot_replies(thread)]
    slept = next(i for i, t in enumerate(texts) if "slept" in t)
    uptime = next(i for i, t in enumerate(texts) if "did uptime" in t)
    assert slept < uptime < texts.index(last["text"])


def test_same_request_again_gets_a_link_unless_forced(baton, counter):
    pg = baton.client()
    thread = pg.ask("@baton run restart service=web")
    pg.wait_card(thread)
    again = pg.ask("@baton run   restart service=web", user="carol")
    link = pg.wait_reply(again, "The same request is waiting for approval")
    target = next(p for p in link["content"]["parts"] if p["kind"] == "link")
    assert (target["channel"], target["thread"]) == ("general", thread)
    assert target["url"] == f"/#/c/general/t/{thread}"
    forced = pg.ask("@baton run restart service=web force", user="carol")
    pg.wait_card(forced)
    assert len([m for m in pg.bot_replies(again)]) == 1


def test_the_same_request_again_in_its_own_thread_is_not_run_twice_unless_forced(baton, counter):
    """Typed again in its own thread while it ran, a request was queued behind itself and then ran a second
    time (the duplicate check looked only at other threads)."""
    pg = baton.client()
    thread = pg.ask("@baton run slow seconds=1.5")
    pg.say("run slow seconds=1.5", thread=thread)  # impatient: queued behind the run it repeats
    answer = pg.wait_reply(thread, "The same request finished just above in this thread")
    assert "force" in answer["text"] and not [p for p in answer["content"]["parts"] if p["kind"] == "link"]
    pg.say("run slow seconds=1.5 force", thread=thread)
    wait_for(lambda: len([m for m in pg.bot_replies(thread) if "slept" in m["text"]]) == 2, 20, "the forced run's output")
    pg.say("run uptime", thread=thread)  # another request in the thread is not a repeat
    pg.wait_reply(thread, "did uptime")
    assert len([m for m in pg.bot_replies(thread) if "slept" in m["text"]]) == 2 and runs_in(counter) == ["uptime"]


def test_a_rejected_request_may_be_asked_again_and_chatter_keeps_a_thread_a_duplicate(baton, counter):
    """A rejected request counted as "finished recently" (asking again was refused), and any reply in a
    finished thread (a "thanks!") made the thread forget its request (the next ask ran it again)."""
    pg = baton.client()
    rejected = pg.ask("@baton run restart service=api")
    pg.click(pg.wait_card(rejected), "bob", action="reject")
    pg.wait_reply(rejected, "Rejected by bob")
    again = pg.ask("@baton run restart service=api", user="carol")
    pg.wait_card(again)  # a new approval round, not a link to the rejected one

    done = pg.ask("@baton run uptime")
    pg.wait_reply(done, "did uptime")
    pg.say("thanks!", user="dave", thread=done)  # conversation: no answer (it was the whole help text)
    pg.say("\u200b", user="dave", thread=done)
    pg.say("@baton status", user="dave", thread=done)  # handled after them, in order
    pg.wait_reply(done, "Status:")
    assert len(pg.bot_replies(done)) == 2
    repeat = pg.ask("@baton run uptime", user="carol")
    link = pg.wait_reply(repeat, "The same request finished recently")
    assert next(p for p in link["content"]["parts"] if p["kind"] == "link")["thread"] == done
    assert runs_in(counter) == ["uptime"]


def test_duplicate_inbound_event_is_ignored(baton, counter):
    pg = baton.client()
    first = pg.say("@baton run uptime", event_id="evt-42")
    second = pg.say("@baton run uptime", event_id="evt-42")
    assert first.json()["delivery"] == "accepted" and second.json()["delivery"] == "duplicate"
    assert first.json()["message"]["id"] == second.json()["message"]["id"]
    thread = first.json()["thread_id"]
    pg.wait_reply(thread, "did uptime")
    assert runs_in(counter) == ["uptime"]
    assert len(pg.bot_replies(thread)) == 1


@ON_SQLITE_ONLY
def test_argument_failing_its_pattern_is_refused(baton, counter):
    pg = baton.client()
    thread = pg.ask("@baton run restart service='web;rm -rf /'")
    reply = pg.wait_reply(thread, "does not match the allowed pattern")
    assert "Nothing was run" in reply["text"] and reply["content"]["tone"] == "warning"
    # Unquoted, as people type it: the value that fails its pattern is named, not only the stray words.
    thread = pg.ask("@baton run restart service=web;rm -rf /")
    reply = pg.wait_reply(thread, "`service=web;rm` does not match the allowed pattern")
    assert "`-rf` is not a `key=value` argument" in reply["text"] and "Nothing was run" in reply["text"]
    thread = pg.ask("@baton run restart service=web extra=1")
    pg.wait_reply(thread, "unknown argument `extra`")
    thread = pg.ask("@baton run restart")
    pg.wait_reply(thread, "missing argument `service`")
    assert runs_in(counter) == []


@ON_SQLITE_ONLY
def test_empty_long_and_unknown_messages_get_polite_answers(baton, counter):
    pg = baton.client()
    empty = pg.say("   ")
    assert empty.status_code == 400 and "must not be empty" in empty.json()["detail"]
    bare = pg.ask("@baton")
    pg.wait_reply(bare, "I see no request in your message")
    invisible = pg.ask("@baton \u200b\u2060")  # zero-width characters only: quoted back as a request before
    pg.wait_reply(invisible, "I see no request in your message")
    huge = pg.ask("@baton run uptime " + "x" * 40_000)
    pg.wait_reply(huge, "I take requests of up to 4,000 characters")
    unknown = pg.ask("@baton please make coffee")
    reply = pg.wait_reply(unknown, "I don't know how to handle")
    assert "run restart service=" in reply["text"]
    unbalanced = pg.ask('@baton run restart service="web')
    pg.wait_reply(unbalanced, "Check the quotes")
    assert pg.say("@baton help", channel="nope").status_code == 404
    assert runs_in(counter) == []


@ON_SQLITE_ONLY
def test_failing_hanging_and_missing_commands_are_reported_as_failures(baton, tmp_path):
    pg = baton.client()
    failed = pg.wait_reply(pg.ask("@baton run fails"), "failed with exit code 3")
    assert "disk full" in failed["text"] and failed["content"]["tone"] == "error"
    missing = pg.wait_reply(pg.ask("@baton run missing"), "could not start /nonexistent/baton-test-tool")
    assert missing["content"]["tone"] == "error"
    pidfile = tmp_path / "hang.pid"
    hung = pg.wait_reply(pg.ask(f"@baton run hang pidfile={pidfile}"), "timed out after 1s and was stopped")
    assert "waiting" in hung["text"] and hung["content"]["tone"] == "error"
    # The whole process group was stopped, the child the command left behind included.
    child = int(pidfile.read_text())
    wait_for(lambda: _gone(child), 10, f"the command's child {child} to be stopped")
    # Failed runs are recorded as failed, and a failure is not "the same request done recently".
    again = pg.ask("@baton run fails")
    pg.wait_reply(again, "failed with exit code 3")


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone, or reaped between the open and the read
        return True
    return state in ("Z", "X")  # killed, waiting to be reaped by whoever inherited it


def test_help_and_status(baton, counter):
    pg = baton.client()
    help_thread = pg.ask("@baton help me")  # the whole help, not "I don't know how to handle “me”"
    reply = pg.wait_reply(help_thread, "Here is what I can do")
    for example in ("run uptime", "status", "announce"):
        assert example in reply["text"]
    assert "don't know" not in reply["text"]
    assert "posted in its thread. (needs approval)" in reply["text"]  # announce stops for a decision
    waiting = pg.ask("@baton run restart service=web", channel="ops")
    pg.wait_card(waiting)
    status = pg.ask("@baton status", channel="ops")
    answer = pg.wait_reply(status, "Status: 1 active thread")
    link = next(p for p in answer["content"]["parts"] if p["kind"] == "link")
    assert link["thread"] == waiting and "waiting for approval" in link["label"]
    note = next(p["text"] for p in answer["content"]["parts"] if p["kind"] == "note")
    # not alice, who asked; a day less the time since it was asked
    assert re.search(r"for bob, expires in 23h \d+m: Run `restart`: Restart a service\.$", note), note
    quiet = pg.ask("@baton status", channel="random")
    pg.wait_reply(quiet, "Nothing is running")


@ON_SQLITE_ONLY
def test_plain_langgraph_interrupt_shows_its_value(baton):
    pg = baton.client()
    thread = pg.ask("@baton announce Maintenance tonight at 22:00 UTC")
    card = pg.wait_card(thread)
    assert "Post this announcement?" in card["text"] and "Maintenance tonight" in card["text"]
    pg.click(card, "bob")
    pg.wait_reply(thread, "(approved by bob)")


@ON_SQLITE_ONLY
def test_messages_without_mention_outside_baton_threads_are_ignored(baton):
    pg = baton.client()
    chat = pg.say("just chatting about lunch")
    assert chat.json()["delivery"] == "ignored"
    dm = pg.ask("help", channel="dm-baton")
    pg.wait_reply(dm, "Here is what I can do")


@ON_SQLITE_ONLY
def test_unknown_click_targets_are_refused_over_http(baton):
    pg = baton.client()
    thread = pg.ask("@baton help")
    reply = pg.wait_reply(thread, "Here is what I can do")
    bad = pg.http.post("/api/clicks", json={"message_id": reply["id"], "approval_id": "nope", "action": "approve",
                                            "user": "bob"})
    assert bad.status_code == 400
    missing = pg.http.post("/api/clicks", json={"message_id": 999999, "approval_id": "nope", "action": "approve",
                                                "user": "bob"})
    assert missing.status_code == 404
    card = pg.wait_card(pg.ask("@baton run restart service=web"))
    wrong = pg.click(card, "bob", action="maybe")
    assert wrong.status_code == 400 and "not one of this message's buttons" in wrong.json()["detail"]


@ON_SQLITE_ONLY
def test_unknown_threads_are_404_not_errors(baton):
    pg = baton.client()
    for thread in ("999999999999999999999999", "²", "abc"):
        assert pg.http.get(f"/api/threads/{thread}/messages").status_code == 404
        assert pg.say("hello", thread=thread).status_code == 404
    too_big = pg.http.post("/api/clicks", json={"message_id": 10**20, "approval_id": "a", "action": "approve", "user": "bob"})
    assert too_big.status_code == 422
