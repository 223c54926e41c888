"""Approvals and the request path as a team hits them (hunt)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from sqlalchemy import update
from sqlmodel import select

from bot import replies
from bot.app import Baton
from bot.config import load_config
from bot.kit import approve
from bot.messages import InboundClick, InboundMessage
from bot.registry import GraphSpec
from bot.settings import Settings
from storage.models import Approval, InboundEvent, OutboxMessage, PlaygroundMessage, Run
from tests.support import ON_SQLITE_ONLY, has_buttons, runs_in, wait_for, write_config


class Two(TypedDict, total=False):
    text: str
    a: str
    b: str
    reply: str


def _two_questions(after_a: Any = None) -> StateGraph:
    async def ask_a(_s: Two) -> Two:
        decision = approve("Question A", risk="low", approvers=["bob"])
        if after_a is not None:
            await after_a()
        return {"a": "yes" if decision.approved else "no"}

    def ask_b(_s: Two) -> Two:
        return {"b": "yes" if approve("Question B", risk="low", approvers=["bob"]).approved else "no"}

    def end(s: Two) -> Two:
        return {"reply": f"A={s.get('a')} B={s.get('b')}"}

    graph = StateGraph(Two)
    graph.add_node("ask_a", ask_a)
    graph.add_node("ask_b", ask_b)
    graph.add_node("end", end)
    graph.add_edge(START, "ask_a")
    graph.add_edge(START, "ask_b")
    graph.add_edge(["ask_a", "ask_b"], "end")
    graph.add_edge("end", END)
    return graph


@asynccontextmanager
async def _baton(tmp_path: Path, config_path: Path, *specs: GraphSpec, url: str | None = None) -> AsyncIterator[Baton]:
    settings = Settings(BATON_DATABASE_URL=url or f"sqlite:///{tmp_path / 'h.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        for spec in specs:
            baton.registry.add(spec)
        yield baton


async def _until(check: Any, timeout: float = 20) -> Any:
    async def poll() -> Any:
        while True:
            found = await check()
            if found:
                return found
            await asyncio.sleep(0.05)
    return await asyncio.wait_for(poll(), timeout)


async def _texts(baton: Baton, thread: str, viewer: str | None = None) -> list[str]:
    async with baton.db.read() as session:
        rows = (await session.exec(select(PlaygroundMessage).where(
            PlaygroundMessage.thread_id == thread, PlaygroundMessage.is_bot).order_by(PlaygroundMessage.id))).all()
    return [row.text for row in rows if not row.visible_to or row.visible_to == viewer]


async def _approvals(baton: Baton) -> list[Approval]:
    async with baton.db.read() as session:
        return list((await session.exec(select(Approval).order_by(Approval.created_at))).all())


async def _click(baton: Baton, approval: Approval, user: str, event_id: str, action: str = "approve") -> None:
    """A click as Slack or Discord delivers it: the card as the user saw it, whatever Baton did to it since."""
    await baton.accept_click(InboundClick(platform="playground", channel="general", thread="1", event_id=event_id,
                                          user=user, approval_id=approval.id, action=action))


async def test_a_failed_run_leaves_no_card_to_click_that_would_revive_it(tmp_path, config_path) -> None:
    """A run asked two questions at once (two branches); approved, one branch failed, and the run failed
    with it. The other card kept its buttons, and a click on it resumed the failed run: the failing step
    ran again and the thread was told "Run failed" twice."""
    after_approval: list[int] = []

    async def fails() -> None:
        after_approval.append(1)
        raise RuntimeError("disk full")

    spec = GraphSpec(name="two", graph=_two_questions(fails), description="Two questions.")
    async with _baton(tmp_path, config_path, spec) as baton:
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="two"))
        by_question = {card.summary: card for card in await _until(lambda: _two_cards(baton))}
        await _click(baton, by_question["Question A"], "bob", "c1")
        texts = await _until(lambda: _texts_with(baton, "disk full"))
        other = next(text for text in texts if "Question B" in text)
        assert other.startswith("*Expired*") and "[Approve]" not in other, texts
        await _click(baton, by_question["Question B"], "bob", "c2")  # its edit had not reached bob yet
        refused = await _until(lambda: _texts_with(baton, "no longer current", viewer="bob"))
        assert after_approval == [1]
        assert len([text for text in refused if "disk full" in text]) == 1
        async with baton.db.read() as session:
            run = (await session.exec(select(Run))).one()
        assert (run.status, run.error) == ("failed", "disk full")
        assert {card.summary: card.status for card in await _approvals(baton)} == {
            "Question A": "approved", "Question B": "stale"}


async def test_a_card_a_failed_run_left_waiting_expires_at_its_click(tmp_path, config_path) -> None:
    """A card left waiting by a run that failed before Baton expired such cards (a database of an older
    Baton): its click resumed the failed run; it is refused and the card loses its buttons."""
    after_approval: list[int] = []

    async def fails() -> None:
        after_approval.append(1)
        raise RuntimeError("disk full")

    spec = GraphSpec(name="two", graph=_two_questions(fails), description="Two questions.")
    async with _baton(tmp_path, config_path, spec) as baton:
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="two"))
        by_question = {card.summary: card for card in await _until(lambda: _two_cards(baton))}
        await _click(baton, by_question["Question A"], "bob", "c1")
        await _until(lambda: _texts_with(baton, "disk full"))
        async with baton.db.session() as session:  # as an older Baton left it
            await session.exec(update(Approval).where(Approval.summary == "Question B").values(  # type: ignore[arg-type]
                status="pending", decided_by=None, decided_at=None))
        await _click(baton, by_question["Question B"], "bob", "c2")
        await _until(lambda: _texts_with(baton, "no longer current", viewer="bob"))
        assert after_approval == [1]
        assert {card.summary: card.status for card in await _approvals(baton)}["Question B"] == "stale"


async def _two_cards(baton: Baton) -> list[Approval] | None:
    found = await _approvals(baton)
    return found if len(found) == 2 else None


async def _decided(baton: Baton, n: int) -> bool:
    return len([a for a in await _approvals(baton) if a.status != "pending"]) >= n



async def _texts_with(baton: Baton, needle: str, viewer: str | None = None) -> list[str] | None:
    texts = await _texts(baton, "1", viewer)
    return texts if any(needle in text for text in texts) else None


def test_approvers_removed_from_baton_yaml_may_no_longer_decide_a_waiting_card(
        start_baton, sqlite_url, tmp_path, counter) -> None:
    """Baton restarted with bob no longer among the approvers (he left the team) and carol in: bob's click
    on a card posted before still ran the command, carol's was refused ("Only bob can approve this"), and
    the card went on naming bob. The card and the check follow baton.yaml as it is now."""
    first = start_baton(sqlite_url, name="before")
    pg = first.client()
    restart = pg.ask("@baton run restart service=web")
    announce = pg.ask("@baton announce maintenance at ten")  # its approvers: the graph's policy (the top list)
    cards = {thread: pg.wait_card(thread) for thread in (restart, announce)}
    assert "approvers: bob (not alice, who asked)" in cards[restart]["text"]
    first.stop()
    write_config(tmp_path, counter, ["alice", "carol"])

    pg = start_baton(sqlite_url, name="after").client()
    for thread, card in cards.items():
        assert pg.click(card, "bob").status_code == 202
        pg.wait_reply(thread, "Only carol can approve this.", viewer="bob")
        edited = wait_for(lambda: next((m for m in pg.bot_replies(thread) if m["id"] == card["id"]  # noqa: B023
                                        and m["revision"] > 1), None), what="the card to name the approvers now")
        assert "approvers: carol (not alice, who asked)" in edited["text"] and has_buttons(edited)
    assert runs_in(counter) == []
    assert pg.click(cards[restart], "carol").status_code == 202
    pg.wait_reply(restart, "did restart web")
    assert runs_in(counter) == ["restart web"]


def test_a_request_only_its_requester_could_approve_is_refused_at_once(
        start_baton, sqlite_url, tmp_path, counter) -> None:
    """alice, the runbook's only approver, asked for it herself: a card was posted that nobody could ever approve
    (its approvers are kept with it; carol's click broke the handling, then was refused), and it held the thread
    for a day, status showing it "waiting for an approver other than alice". She is told at once, nothing runs,
    and the same request of bob's gets a card she approves."""
    write_config(tmp_path, counter, ["alice"])
    pg = start_baton(sqlite_url).client()
    thread = pg.ask("@baton run restart service=web", user="alice")
    refusal = pg.wait_reply(thread, "I stopped before this: nothing was run. Nobody could ever approve it")
    assert "someone other than you has to approve it, and its only approver in baton.yaml is you" in refusal["text"]
    assert not any(has_buttons(message) for message in pg.bot_replies(thread))
    pg.wait_reply(pg.ask("@baton status", user="carol"), "Nothing is running or waiting for approval")
    asked = pg.ask("@baton run restart service=web", user="bob")  # a failed request may be asked again
    card = pg.wait_card(asked)
    assert "Requested by bob · risk high · approvers: alice" in card["text"]
    assert pg.click(card, "alice").status_code == 202
    pg.wait_reply(asked, "did restart web")
    assert runs_in(counter) == ["restart web"]


@ON_SQLITE_ONLY
def test_people_talking_in_a_thread_that_waits_are_not_told_their_words_are_queued(baton, counter) -> None:
    """While a card waited, each line people wrote to each other in its thread ("bob, can you look?"),
    without mentioning Baton, got "Queued: I'll handle this after the approval is decided...", and then no
    answer (conversation gets none). A request written there without a mention is still told."""
    pg = baton.client()
    thread = pg.ask("@baton run restart service=web")
    card = pg.wait_card(thread)
    pg.say("bob, can you have a look?", thread=thread, user="alice")
    pg.say("looking now", thread=thread, user="bob")
    pg.say("status of web-2 below:\n" + "x" * 5000, thread=thread, user="dave")  # too long: no answer, so no note
    pg.say("run uptime", thread=thread, user="carol")  # a command: a request, without the mention too
    pg.wait_reply(thread, "Queued: I'll handle this after the approval is decided")
    pg.click(card, "bob")
    pg.wait_reply(thread, "did uptime")
    texts = [m["text"] for m in pg.bot_replies(thread)]
    assert len([text for text in texts if text.startswith("Queued:")]) == 1, texts
    assert runs_in(counter) == ["restart web", "uptime"]


@ON_SQLITE_ONLY
def test_a_long_text_pasted_in_a_baton_thread_for_people_gets_no_answer(baton, counter) -> None:
    """A log pasted into a Baton thread, for the people there, without mentioning Baton, was answered
    "That request is 5,017 characters long; I take requests of up to 4,000 characters" (conversation gets
    no answer). Addressed to Baton, it still is."""
    pg = baton.client()
    thread = pg.ask("@baton run uptime")
    pg.wait_reply(thread, "did uptime")
    pg.say("here is the log:\n" + "x" * 5000, thread=thread, user="bob")
    pg.say("@baton run uptime " + "x" * 5000, thread=thread, user="bob")
    pg.wait_reply(thread, "characters long")
    texts = [m["text"] for m in pg.bot_replies(thread)]
    assert [text for text in texts if "characters long" in text] == [
        "That request is 5,011 characters long; I take requests of up to 4,000 characters. Nothing was run."], texts


def _one_question(node: str) -> StateGraph:
    def ask(_s: Two) -> Two:
        return {"reply": "deployed" if approve("Deploy?", risk="low", approvers=["bob"]).approved else "not deployed"}

    graph = StateGraph(Two)
    graph.add_node(node, ask)
    graph.add_edge(START, node)
    graph.add_edge(node, END)
    return graph


async def test_a_card_whose_graph_changed_since_fails_its_run_instead_of_leaving_the_thread_waiting(
        tmp_path, config_path) -> None:
    """The graph's author shipped a new version (a node renamed) while a card waited. The click found no
    question in the graph's saved state: the card expired, but the run and the thread stayed "waiting"
    for good: `status` listed it, the same request got a link to it, and a follow-up was "Queued" and never
    handled. The run fails now, saying why, and the thread goes on."""
    async with _baton(tmp_path, config_path, GraphSpec(name="deploy", graph=_one_question("confirm"))) as baton:
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="deploy"))
        card = (await _until(lambda: _approvals(baton)))[0]
    async with _baton(tmp_path, config_path, GraphSpec(name="deploy", graph=_one_question("ask"))) as baton:
        await _click(baton, card, "bob", "c1")
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e2", user="alice", text="run uptime", addressed=False))
        texts = await _until(lambda: _texts_with(baton, "did uptime"))
        assert any("This run cannot go on: the `deploy` graph's saved state no longer holds the question" in text
                   for text in texts), texts
        async with baton.db.read() as session:
            runs = [(run.graph, run.status) for run in (await session.exec(select(Run).order_by(Run.id))).all()]
        assert runs == [("deploy", "failed"), ("runbook", "done")]
        assert [approval.status for approval in await _approvals(baton)] == ["stale"]


@ON_SQLITE_ONLY
def test_a_failed_request_may_be_asked_again_after_its_thread_answered_something_else(baton, counter) -> None:
    """A request failed; someone asked `status` in its thread, which made the thread "done" again, and the
    same request asked anew within 10 minutes got "The same request finished recently in another thread"
    (a link to the failure) instead of a second try."""
    pg = baton.client()
    failed = pg.ask("@baton run fails")
    pg.wait_reply(failed, "exit code 3")
    pg.say("@baton status", thread=failed)
    pg.wait_reply(failed, "Status")
    again = pg.ask("@baton run fails", user="bob")
    pg.wait_reply(again, "exit code 3")
    assert not any("same request" in m["text"] for m in pg.bot_replies(again))


async def test_a_request_whose_handling_broke_off_may_be_asked_again(tmp_path, config_path, monkeypatch) -> None:
    """As a failed run's: a run whose handling broke off (its reply could not be made) is failed, and once its
    thread answered something else, the same request got a link to it instead of a second try."""
    def broken(_state: Two) -> Two:
        return {"reply": "fine"}

    real = replies.result

    def unforeseen(reply: object, **kwargs: object) -> object:
        if reply == "fine":
            raise RuntimeError("the reply could not be made")
        return real(reply, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(replies, "result", unforeseen)

    graph = StateGraph(Two)
    graph.add_node("act", broken)
    graph.add_edge(START, "act")
    graph.add_edge("act", END)
    async with _baton(tmp_path, config_path, GraphSpec(name="bogus", graph=graph, description="Broken.")) as baton:
        for event_id, thread, text in [("e1", "1", "bogus"), ("e2", "1", "status"), ("e3", "2", "bogus")]:
            await baton.accept_message(InboundMessage(platform="playground", channel="general", thread=thread,
                                                      event_id=event_id, user="alice", text=text))
            await _until(lambda: _handled(baton, event_id))  # noqa: B023
        assert await _texts(baton, "2") == ["Something went wrong while handling this; it was logged."]
        async with baton.db.read() as session:  # with a turnaround: the histogram counts what the counters count
            broke = (await session.exec(select(Run.status, Run.turnaround_ms).where(Run.graph == "bogus"))).all()
        assert [status for status, _ in broke] == ["failed", "failed"] and all(ms is not None for _, ms in broke)


async def _handled(baton: Baton, event_id: str) -> bool:
    async with baton.db.read() as session:
        event = (await session.exec(select(InboundEvent).where(InboundEvent.event_id == event_id))).one()
    return event.status == "done"


async def test_at_start_waiting_cards_name_the_approvers_baton_yaml_gives_now(tmp_path, counter) -> None:
    """Restarted with carol as an approver instead of bob, Baton went on showing "approvers: bob" on the
    waiting card (and listing bob in status) until somebody clicked: carol did not know she was asked."""
    write_config(tmp_path, counter, ["alice", "bob"])
    async with _baton(tmp_path, tmp_path / "baton.yaml") as baton:
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="run restart service=web"))
        await _until(lambda: _approvals(baton))
    write_config(tmp_path, counter, ["alice", "carol"])
    async with _baton(tmp_path, tmp_path / "baton.yaml") as baton:
        texts = await _until(lambda: _texts_with(baton, "approvers: carol (not alice, who asked)"))  # at its start
        assert [approval.approvers for approval in await _approvals(baton)] == [["alice", "carol"]]
        assert any("[Approve]" in text for text in texts)
        assert await baton.orchestrator.refresh_approvers() == 0  # type: ignore[union-attr]


async def test_two_replicas_bringing_a_card_up_to_date_together_edit_it_once(tmp_path, counter, database_url) -> None:
    """Two replicas starting together with a changed approvers list both found the card's old list, and both
    changed it and edited the card: every platform got the same edit twice."""
    write_config(tmp_path, counter, ["alice", "bob"])
    config = tmp_path / "baton.yaml"
    async with _baton(tmp_path, config, url=database_url) as one, _baton(tmp_path, config, url=database_url) as two:
        await one.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                event_id="e1", user="alice", text="run restart service=web"))
        await _until(lambda: _approvals(one))
        write_config(tmp_path, counter, ["alice", "carol"])
        for baton in (one, two):  # what each reads at its start
            baton.services.config = load_config(tmp_path / "baton.yaml")
        changed = await asyncio.gather(*(baton.orchestrator.refresh_approvers() for baton in (one, two)))  # type: ignore[union-attr]
        assert sorted(changed) == [0, 1]
        await _until(lambda: _texts_with(one, "approvers: carol (not alice, who asked)"))
        async with one.db.read() as session:
            edits = (await session.exec(select(OutboxMessage).where(OutboxMessage.kind == "update"))).all()
        assert len(edits) == 1
