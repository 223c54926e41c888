"""A thread whose run waits at a card answers ``status``, ``help`` and a typed ``approve`` at once.

A card may wait a day (``BATON_APPROVAL_EXPIRY_SECONDS``), and every request written in its thread meanwhile was
queued behind it: ``@baton status`` was told "Queued: I'll handle this after the approval is decided ..." and got
no answer until someone decided; ``@baton approve`` waited as long, and was then answered "I don't know how to
handle `approve`". Status and help change nothing, so they are answered beside the waiting run (``aside``); a typed
decision is told to use the card's buttons, which check who may decide (typed text approves nothing). New work
still waits for the decision, in order.
"""

from __future__ import annotations

import pytest

from bot.registry import GraphRegistry, GraphSpec
from bot.routing import aside
from tests.support import has_buttons, runs_in, wait_for
from tests.test_cancel import config_path, rows, started_sleeping  # noqa: F401 (config_path: a fixture)
from tests.test_models import guess, model_script  # noqa: F401 (a fixture)

@pytest.mark.parametrize(("text", "addressed", "asked"), [
    ("status", True, "status"), ("STATUS", False, "status"), ("force status", True, "status"),
    ("status of web-2 is fine now", False, None), ("help me", True, "help"),
    ("help me check the logs, carol?", False, None),
    ("Approve!", True, "approve"), ("approve it please", True, "approve"), ("reject.", False, "reject"),
    ("approve?", False, "approve"), ("can you approve this, bob?", False, None), ("approve it, bob", False, None),
    ("run uptime", True, None), ("summarize", True, None), ("cancel", True, None), ("", True, None),
])
def test_what_is_answered_beside_a_busy_threads_run(text: str, addressed: bool, asked: str | None) -> None:
    """Status and help as routing reads them, and a decision typed: unmentioned, people talking stays talk."""
    assert aside(text, GraphRegistry.discover(), addressed=addressed) == asked


def test_a_graph_named_approve_is_a_request_not_a_decision_typed() -> None:
    registry = GraphRegistry.discover()
    registry.add(GraphSpec(name="approve", graph=None))
    assert aside("approve", registry, addressed=True) is None


POINTER = "A typed `{}` decides nothing: use the Approve or Reject button on the approval card above"


def _pending(database_url: str) -> int:
    return int(rows(database_url, "SELECT count(*) FROM inbound_events WHERE status = 'pending'")[0][0])


def _texts(pg, thread: str, viewer: str | None = None) -> list[str]:
    return [m["text"] for m in pg.bot_replies(thread, viewer)]


def test_status_and_help_are_answered_while_a_card_waits_and_the_card_still_works(
        start_baton, database_url, counter) -> None:
    pg = start_baton(database_url).client()
    thread = pg.ask("@baton run restart service=web", user="alice")
    card = pg.wait_card(thread)

    pg.say("@baton status", thread=thread, user="carol")
    status = pg.wait_reply(thread, "Status: 1 active thread")  # before anyone decided: the card still waits
    assert "run restart service=web — waiting for approval (asked by alice" in status["text"], status["text"]
    assert "for bob" in status["text"], status["text"]
    pg.say("help", thread=thread, user="dave")  # the word alone, without a mention, in the Baton thread
    pg.wait_reply(thread, "Here is what I can do")
    assert has_buttons(next(m for m in pg.bot_replies(thread) if m["id"] == card["id"]))
    assert runs_in(counter) == []

    assert pg.click(card, "bob").status_code == 202
    pg.wait_reply(thread, "did restart web")
    assert runs_in(counter) == ["restart web"]
    assert not any("Queued" in text or "I don't know" in text for text in _texts(pg, thread))
    wait_for(lambda: _pending(database_url) == 0, what="every event handled")
    assert rows(database_url, "SELECT graph, status FROM runs ORDER BY id") == [("runbook", "done")]  # none beside


def test_a_typed_approve_is_pointed_at_the_card_at_once_and_requests_wait_for_the_decision_in_order(
        start_baton, database_url, counter) -> None:
    pg = start_baton(database_url).client()
    thread = pg.ask("@baton run restart service=web", user="alice")
    card = pg.wait_card(thread)

    pg.say("@baton Approve!", thread=thread, user="bob")
    told = pg.wait_reply(thread, POINTER.format("approve"), viewer="bob")
    assert "It is waiting for bob." in told["text"], told["text"]
    pg.say("@baton run uptime", thread=thread, user="carol")  # new work: queued behind the card
    pg.wait_reply(thread, "Queued: I'll handle this after the approval is decided and the current run finishes.")
    pg.say("reject.", thread=thread, user="alice")  # the word alone, without a mention
    withdraw = pg.wait_reply(thread, POINTER.format("reject"), viewer="alice")
    assert "You asked for it: its Reject button (or `cancel`) withdraws it." in withdraw["text"], withdraw["text"]
    pg.say("@baton run slow seconds=0.1", thread=thread, user="carol")
    wait_for(lambda: _pending(database_url) == 2, what="the pointers answered and the two requests left queued")
    assert runs_in(counter) == []  # typed text decided nothing
    assert has_buttons(next(m for m in pg.bot_replies(thread) if m["id"] == card["id"]))
    assert len([text for text in _texts(pg, thread) if "Queued" in text]) == 2  # the requests', not the pointers'

    assert pg.click(card, "bob").status_code == 202
    wait_for(lambda: _pending(database_url) == 0, what="the queued requests handled")
    texts = _texts(pg, thread)
    done = [next(at for at, text in enumerate(texts) if said in text) for said in ("did restart web", "did uptime",
                                                                                   "slept")]
    assert done == sorted(done), texts  # the run the card was for, then the requests in the order asked
    assert runs_in(counter) == ["restart web", "uptime"]
    everyone = [text for viewer in ("alice", "bob", "carol") for text in _texts(pg, thread, viewer)]
    assert not any("I don't know" in text for text in everyone), everyone
    assert sum(POINTER.format("approve") in text for text in _texts(pg, thread, "bob")) == 1
    assert rows(database_url, "SELECT outcome FROM inbound_events WHERE kind = 'aside' ORDER BY id") == \
        [("typed decision",), ("typed decision",)]


def test_at_a_which_one_card_status_is_answered_and_a_typed_approve_is_told_nothing_asks_for_one(
        start_baton, sqlite_url, model_script) -> None:  # noqa: F811
    pg = start_baton(sqlite_url, env=model_script(guess("status", 0.4, "help"))).client()
    thread = pg.ask("@baton hmm, the thing?", user="alice")
    card = pg.wait_card(thread)
    pg.say("@baton status", thread=thread, user="carol")
    status = pg.wait_reply(thread, "Status: 1 active thread")
    assert "waiting for a choice (asked by alice" in status["text"], status["text"]
    pg.say("@baton approve", thread=thread, user="carol")
    pg.wait_reply(thread, 'Nothing here waits for an approval: the "Which one?" card above asks alice which graph '
                          "they meant", viewer="carol")
    assert not any("Queued" in text for text in _texts(pg, thread, "carol"))
    assert pg.click(card, "alice", action="help").status_code == 202  # the card is picked from as before
    pg.wait_reply(thread, "Here is what I can do")


def test_behind_a_running_run_a_typed_approve_is_told_there_is_no_card_not_i_dont_know(
        start_baton, sqlite_url, tmp_path) -> None:
    """While a run runs, its replica holds the thread: status and a typed decision are answered once it ends
    (or stops at a card), ahead of the requests queued there, and a typed decision no longer gets "I don't know"."""
    pg = start_baton(sqlite_url).client()
    thread = pg.ask("@baton run sleepy", user="alice")
    started_sleeping(tmp_path)
    pg.say("@baton approve", thread=thread, user="bob")
    pg.say("@baton status", thread=thread, user="carol")
    pg.wait_reply(thread, "Queued: I'll handle this after the current run finishes.")
    pg.say("cancel", thread=thread, user="alice")
    pg.wait_reply(thread, "alice cancelled `run sleepy`")
    pg.wait_reply(thread, "Nothing in this thread waits for a decision now, so a typed `approve` changes nothing.",
                  viewer="bob")
    pg.wait_reply(thread, "Nothing is running or waiting for approval")
    wait_for(lambda: _pending(sqlite_url) == 0, what="every event handled")
    assert not any("I don't know" in text for text in _texts(pg, thread, "bob"))


@pytest.mark.postgres
def test_at_a_card_another_replica_answers_status_and_a_typed_approve_once(start_baton, postgres_url,
                                                                             counter) -> None:
    one, two = start_baton(postgres_url, name="one"), start_baton(postgres_url, name="two")
    thread = one.client().ask("@baton run restart service=web", user="alice")
    card = one.client().wait_card(thread)
    other = two.client()
    other.say("@baton status", thread=thread, user="carol")
    other.say("@baton approve", thread=thread, user="bob")
    other.say("@baton run uptime", thread=thread, user="carol")
    other.wait_reply(thread, "Status: 1 active thread")
    other.wait_reply(thread, POINTER.format("approve"), viewer="bob")
    wait_for(lambda: _pending(postgres_url) == 1, what="status and the pointer answered, the request queued")
    assert runs_in(counter) == []
    assert one.client().click(card, "bob").status_code == 202
    one.client().wait_reply(thread, "did uptime")
    wait_for(lambda: _pending(postgres_url) == 0, what="every event handled")
    texts = _texts(other, thread, "bob")
    assert sum("Status: 1 active thread" in text for text in texts) == 1
    assert sum(POINTER.format("approve") in text for text in texts) == 1
    assert runs_in(counter) == ["restart web", "uptime"]
