"""Hunting defects in the core request flows: cancel, duplicates, argument errors, status, as people use them."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from bot.kit import approve
from bot.messages import InboundClick, InboundMessage
from bot.registry import GraphRegistry, GraphSpec
from bot import replies
from bot.replies import age
from bot.routing import (CANCEL_COMMAND, RouteError, aside, cancel_word, is_cancel, is_request, route,
                         runbook_named)
from storage.models import InboundEvent
from tests.support import alive, has_buttons, runs_in, until, wait_for
from tests.test_approvals_hunt import _baton
from tests.test_cancel import config_path, started_sleeping  # noqa: F401 (config_path: a fixture)
from tests.test_graph_authoring_hunt2 import _bot_texts, _one_node, _runs, _waiting_card
from tests.test_graph_modules import State
from tests.test_models import guess, model_script  # noqa: F401 (a fixture)
from tests.test_routing import CONFIG, REGISTRY, REQUEST


async def _say(baton: Any, event_id: str, text: str) -> None:
    """alice writes ``text`` in thread 1 of #general."""
    await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                              event_id=event_id, user="alice", text=text))


@pytest.mark.parametrize("text", ["cancel!", "Cancel.", "CANCEL!!", "force cancel!"])
def test_cancel_written_in_a_hurry_is_a_cancel(text: str) -> None:
    assert is_cancel(text, addressed=False) and is_cancel(text, addressed=True)
    assert route(REQUEST, text, REGISTRY, CONFIG).graph == CANCEL_COMMAND
    assert is_request(text, REGISTRY, addressed=False)
    assert not is_cancel(f"{text} the standup", addressed=False)  # people talking, as "cancel the standup"
    assert not is_cancel("cancelled!", addressed=True) and not is_cancel("cancel?!x", addressed=True)


def test_cancel_with_an_exclamation_mark_stops_the_run_instead_of_waiting_behind_it(
        start_baton, sqlite_url, tmp_path) -> None:
    """"@baton cancel!" was queued behind the run it was meant to stop ("Queued: I'll handle this after the current
    run finishes"), and once the run had ended on its own it was answered "I don't know how to handle `cancel!`"."""
    pg = start_baton(sqlite_url).client()
    thread = pg.ask("@baton run sleepy", user="alice")
    pid = started_sleeping(tmp_path)
    pg.say("@baton cancel!", thread=thread, user="alice")
    reply = pg.wait_reply(thread, "alice cancelled `run sleepy` after")
    assert "a command it was running was killed" in reply["text"]
    assert not any("Queued" in m["text"] for m in pg.bot_replies(thread))
    wait_for(lambda: not alive(pid), what="the command to be killed")


@pytest.mark.parametrize("text", ["stop", "Stop!", "STOP.", "force stop"])
def test_stop_is_a_cancel_unless_a_graph_is_named_so(text: str) -> None:
    """The word people write first: "@baton stop" was answered with help, and the run went on."""
    assert is_cancel(text, addressed=False, registry=REGISTRY) and is_cancel(text, addressed=True, registry=REGISTRY)
    assert route(REQUEST, text, REGISTRY, CONFIG).graph == CANCEL_COMMAND
    assert is_request(text, REGISTRY, addressed=False)
    assert not is_cancel(f"{text} by later", addressed=False, registry=REGISTRY)  # people talking
    assert not is_cancel("stopped", addressed=True, registry=REGISTRY)
    registry = GraphRegistry.discover()
    registry.add(GraphSpec(name="stop", graph=None))  # a graph of that name: its name is its own
    assert not is_cancel(text, addressed=True, registry=registry)
    assert route(REQUEST, "stop", registry, CONFIG).graph == "stop"


def test_stop_followed_by_words_is_left_to_the_graphs_patterns_and_the_model() -> None:
    """Only ``stop`` alone cancels: "stop web-2" is a graph's pattern here (and "stop the nginx service" a model's
    to route); as the first word of anything, it took those for a cancel."""
    registry = GraphRegistry.discover()
    registry.add(GraphSpec(name="services", graph=None, patterns=[re.compile(r"^(start|stop) (?P<svc>[\w-]+)$")]))
    assert route(REQUEST, "stop web-2", registry, CONFIG).graph == "services"
    assert not is_cancel("stop web-2", addressed=True, registry=registry)
    assert route(REQUEST, "stop the nginx service", registry, CONFIG).unmatched  # the model's, when there is one
    assert route(REQUEST, "cancel web-2", registry, CONFIG).graph == CANCEL_COMMAND  # as before


def test_stop_written_in_a_runs_thread_stops_it(start_baton, sqlite_url, tmp_path) -> None:
    pg = start_baton(sqlite_url).client()
    thread = pg.ask("@baton run sleepy", user="alice")
    pid = started_sleeping(tmp_path)
    pg.say("stop", thread=thread, user="alice")  # the word alone, without a mention
    reply = pg.wait_reply(thread, "alice cancelled `run sleepy` after")
    assert "a command it was running was killed" in reply["text"]
    wait_for(lambda: not alive(pid), what="the command to be killed")
    top = pg.ask("@baton stop", user="alice")  # in a channel: there is no run to stop; named as it was written
    pg.wait_reply(top, "`stop` ends a run that is going on: write it in that run's thread.")
    pg.say("@baton stop", thread=thread, user="alice")  # the run is over: "nothing to cancel" named another word
    pg.wait_reply(thread, "Nothing is running in this thread, so there is nothing to stop.")


@pytest.mark.parametrize(("text", "word"), [("stop", "stop"), ("Stop!", "stop"), ("force stop", "stop"),
                                            ("cancel", "cancel"), ("cancel deploy-42", "cancel"), ("", "cancel")])
def test_a_cancels_answers_name_the_word_it_was_written_with(text: str, word: str) -> None:
    assert cancel_word(text) == word
    assert f"your `{word}`" in replies.cancel_too_late(word).plain_text()


@pytest.mark.parametrize("rest", [
    " ".join(f"line{n}" for n in range(600)),  # a log pasted after the request
    " ".join(f"key{n}=value" for n in range(300)),  # arguments the runbook does not take
    " ".join(["oops"] * 700),
])
def test_a_runbook_request_with_hundreds_of_wrong_words_gets_a_short_answer(rest: str) -> None:
    """Each wrong word was a problem of its own in the answer: 4,000 characters asked were answered with 20,000
    (several messages on Slack) of "`line7` is not a `key=value` argument; ...". The first few are named."""
    with pytest.raises(RouteError) as refused:
        route(REQUEST, f"run uptime {rest}", REGISTRY, CONFIG)
    said = str(refused.value)
    assert len(said) < 1000, said
    assert said.endswith("Usage: `run uptime` (no arguments). Nothing was run."), said
    first = rest.split()[0].partition("=")[0]
    assert f"`{first}`" in said and ("more" in said or rest.startswith("oops"))
    assert said.count("`oops`") <= 1


def test_cancel_at_a_which_one_card_withdraws_it(start_baton, sqlite_url, model_script) -> None:  # noqa: F811
    """``cancel`` at a "Which one?" card (the model unsure which graph was meant) was stored as a request, queued
    behind the card for its day ("Queued: I'll handle this after the approval is decided ..."), and answered
    "Nothing is running in this thread" once a graph had been picked and run: the card could not be withdrawn."""
    pg = start_baton(sqlite_url, env=model_script(guess("status", 0.4, "help"))).client()
    thread = pg.ask("@baton hmm, the thing?", user="alice")
    card = pg.wait_card(thread)
    pg.say("@baton run uptime", thread=thread, user="carol")  # waits for the pick, told so (not "the approval")
    pg.wait_reply(thread, "Queued: I'll handle this after one of the choices above is picked and its run finishes.")
    pg.say("cancel", thread=thread, user="carol")  # neither who asked nor an approver
    pg.wait_reply(thread, "Only alice, who asked for it, or bob can cancel this run.", viewer="carol")
    pg.say("cancel", thread=thread, user="alice")
    reply = pg.wait_reply(thread, "alice cancelled the choice for `hmm, the thing?` after")
    assert "none of its graphs was run" in reply["text"]
    ended = wait_for(lambda: (shown := next(m for m in pg.bot_replies(thread) if m["id"] == card["id"]))
                     and not has_buttons(shown) and shown, what="the card without its buttons")
    assert "Cancelled by alice at" in ended["text"], ended["text"]  # it said "Expired by Baton"
    assert len([m for m in pg.bot_replies(thread) if "Queued" in m["text"]]) == 1  # carol's request, not the cancel
    assert pg.click(card, "alice", action="status").status_code == 400  # nothing left to pick
    pg.wait_reply(thread, "did uptime")  # carol's request, in its turn
    pg.say("status", thread=thread, user="alice")  # the thread goes on as any other
    pg.wait_reply(thread, "Nothing is running or waiting for approval")


@pytest.mark.parametrize(("seconds", "shown"), [(0.9, "900ms"), (2.94, "2.9s"), (59.7, "1m"), (3599.0, "59m")])
def test_status_ages_are_not_cut_to_whole_seconds_before_they_are_written(seconds: float, shown: str) -> None:
    """``status`` listed a run asked 0.9 s before as "asked by alice, 0ms", and one of 2.9 s as "2.0s"."""
    asked = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
    assert age(asked, asked + timedelta(seconds=seconds)) == shown


@pytest.mark.parametrize(("first", "told"), [
    ("reject", "bob rejected this request already: nothing was left for your `cancel` to stop."),
    ("cancel", "alice cancelled this run already."),  # "cancel" typed twice: the first withdrew the card
])
async def test_a_cancel_as_a_run_answers_its_reject_leaves_the_rejection_its_reply(
        tmp_path: Path, config_path: Path, first: str, told: str) -> None:
    """A ``cancel`` stored while a run went on after a Reject (sent twice, the first a Reject at the card; or sent
    as bob clicked Reject) stopped the rejection's end: its reply was lost for "alice cancelled `tidy` ..., so I
    stopped it: ... a command it was running was killed" (none was), and the rejected run ended cancelled."""
    ending, go = asyncio.Event(), asyncio.Event()

    async def node(_state: State) -> State:
        if approve("Tidy the cache?", risk="high").approved:
            return {"reply": "tidied"}
        ending.set()  # answering the rejection takes a moment (a graph tidying up, a model told of it)
        await go.wait()
        return {"reply": "not tidied: it was rejected"}

    async with _baton(tmp_path, config_path, GraphSpec(name="tidy", graph=_one_node(node))) as baton:
        await _say(baton, "e1", "tidy")
        card = await _waiting_card(baton, 1)
        if first == "reject":
            await baton.accept_click(InboundClick(platform="playground", channel="general", thread="1",
                                                  event_id="c1", user="bob", approval_id=card.id, action="reject"))
        else:
            await _say(baton, "e2", "cancel")
        await asyncio.wait_for(ending.wait(), 20)
        await _say(baton, "e3", "cancel")
        await baton.orchestrator.look_beside_runs()  # type: ignore[union-attr]  # the look a sweep makes, at least once
        go.set()
        async def handled() -> bool:  # the run ended, and the cancel was answered
            async with baton.db.read() as session:
                return not (await session.exec(select(InboundEvent).where(InboundEvent.status == "pending"))).all()

        await until(handled, "the run and the cancel handled")
        assert await _runs(baton) == [("tidy", "done", None)]
        texts = await _bot_texts(baton, "1", 3)  # the card (edited in place), the rejection's reply, the cancel's
        assert "not tidied: it was rejected" in texts and told in texts, texts


@pytest.mark.parametrize("text", [
    "run restart\u00a0service=web",  # a no-break space pasted from a wiki page
    "run restart\u00a0 service=web",  # two spaces typed in Slack's editor, which sends them as "\u00a0 "
    "run restart\u3000service=web",  # an ideographic space (a Japanese keyboard's)
])
def test_a_run_request_with_another_space_between_its_words_is_read_as_written(text: str) -> None:
    """It was refused with "I don't know a runbook called `restart service=web`", the space shown as any other."""
    chosen = route(REQUEST, text, REGISTRY, CONFIG)
    assert chosen.input == {"runbook": "restart", "args": {"service": "web"}}
    assert chosen.fingerprint == route(REQUEST, "run restart service=web", REGISTRY, CONFIG).fingerprint
    assert runbook_named(text) == "restart"
    with pytest.raises(RouteError, match="does not match the allowed pattern"):  # quoted, a value keeps it
        route(REQUEST, 'run restart service="web\u00a0"', REGISTRY, CONFIG)


async def test_a_cancelled_run_that_ran_no_command_is_not_said_to_have_had_one_killed(
        tmp_path: Path, config_path: Path) -> None:
    """Every cancelled run was told "..., so I stopped it: nothing more of it will run, and a command it was
    running was killed": a graph that runs none (waiting on a model, an HTTP call), or a runbook cancelled before
    its command started, too."""
    waiting = asyncio.Event()

    async def node(_state: State) -> State:
        waiting.set()
        await asyncio.Event().wait()  # a slow call, never answered
        return {"reply": "answered"}

    async with _baton(tmp_path, config_path, GraphSpec(name="asker", graph=_one_node(node))) as baton:
        await _say(baton, "e1", "asker")
        await asyncio.wait_for(waiting.wait(), 20)
        await _say(baton, "e2", "cancel")
        (text,) = await _bot_texts(baton, "1", 1)
        assert "alice cancelled `asker` after" in text, text
        assert "I stopped it: nothing more of it will run." in text and "killed" not in text, text
        assert await _runs(baton) == [("asker", "failed", "cancelled by alice")]


def test_a_request_typed_again_while_its_card_waited_is_not_asked_again_once_rejected(baton, counter) -> None:
    """Typed again in its thread while its card waited (impatient), a request was queued behind itself; bob
    rejected the first, and the repeat asked him again at once: a second card right under his Reject. Approved,
    the repeat was told "finished just above"; typed again in the channel, it got a link. Asked again after the
    Reject, it is a new request, as a rejected one may be."""
    pg = baton.client()
    thread = pg.ask("@baton run restart service=api", user="alice")
    card = pg.wait_card(thread)
    pg.say("run restart service=api", thread=thread, user="alice")
    pg.wait_reply(thread, "Queued: I'll handle this after the approval is decided")
    pg.click(card, "bob", action="reject")
    reply = pg.wait_reply(thread, "bob rejected the same request just above in this thread")
    assert "force" in reply["text"]
    assert [m["id"] for m in pg.bot_replies(thread) if "Approval needed" in m["text"] or has_buttons(m)] == []
    pg.say("run restart service=api", thread=thread, user="alice")  # after the Reject: asked again
    pg.click(pg.wait_card(thread), "bob")
    pg.wait_reply(thread, "did restart api")
    assert runs_in(counter) == ["restart api"]


@pytest.mark.parametrize("text", ["run restart service=web Force", "run restart service=web FORCE",
                                  "Force run restart service=web", "run Restart FORCE service=web"])
def test_force_is_force_however_it_is_capitalised_in_a_run_request(text: str) -> None:
    """`run uptime Force` was refused ("`Force` is not a `key=value` argument"), though a leading `Force`, a graph's
    trailing `FORCE` and baton.yaml's check of a runbook's `example` all take the word in any case."""
    chosen = route(REQUEST, text, REGISTRY, CONFIG)
    assert chosen.force and chosen.input == {"runbook": "restart", "args": {"service": "web"}}
    assert runbook_named(text) == "restart"


def test_a_decision_with_words_a_graphs_pattern_takes_is_that_graphs_request_in_a_busy_thread() -> None:
    """"@baton approve pr 42" runs the ``prs`` graph in an idle thread; written while a run ran (or waited at a
    card), it was taken for a typed decision ("A typed `approve` decides nothing") and never ran."""
    registry = GraphRegistry.discover()
    registry.add(GraphSpec(name="prs", graph=None, patterns=[re.compile(r"^(approve|reject) pr (?P<n>\d+)$")]))
    assert route(REQUEST, "approve pr 42", registry, CONFIG).graph == "prs"
    assert aside("approve pr 42", registry, addressed=True) is None
    assert aside("force approve pr 42", registry, addressed=True) is None
    assert aside("approve", registry, addressed=True) == "approve"  # the word alone, or with words no graph takes
    assert aside("approve it please", registry, addressed=True) == "approve"
