"""Approvals, a second hunt: cards, who decides, and plain graphs' interrupts as a team meets them."""

from __future__ import annotations

import pytest
from langgraph.types import interrupt
from sqlmodel import select

from bot.kit import approve
from bot.messages import InboundClick, InboundMessage
from bot.registry import GraphSpec
from storage.models import Approval, PlaygroundMessage
from tests.support import runs_in, until, write_config
from tests.test_approvals_hunt import _baton
from tests.test_graph_authoring_hunt2 import _asking, _bot_texts, _runs, _waiting_card
from tests.test_graph_modules import State, _asked, _reply


async def _no_card(baton) -> None:
    async with baton.db.read() as session:
        assert (await session.exec(select(Approval))).first() is None


@pytest.mark.parametrize(("approvers", "expected"), [
    # "approvers: " on the card, and bob was told "Only  can approve this."
    ([""], "approve(): an approver is empty: remove it, or write the user id"),
    # bob, the one approver named, was told "Only bob  can approve this." and could never approve
    (["bob "], "approve(): the approver 'bob ' has spaces around it: write 'bob'"),
    (["bo\u200bb"], "approve(): the approver 'bob' holds an invisible character (U+200B)"),
])
async def test_approve_naming_an_approver_nobody_is_fails_the_run_saying_so(
        tmp_path, config_path, approvers, expected) -> None:
    """A graph's own approvers with an empty name, spaces around one or an invisible character (read from a
    file, pasted from a document) posted a card that waited a day: no click ever matched, and the approver
    named was told only someone of the same name could approve. baton.yaml refuses such names at start."""
    def ask(_state: State) -> str:
        return str(approve("Drop the cache?", approvers=approvers, risk="low").approved)

    async with _asked(tmp_path, config_path, GraphSpec(name="cache", graph=_asking(ask)), "cache") as baton:
        reply = await _reply(baton, "1")
        assert expected in reply, reply
        await _no_card(baton)


async def test_the_requester_of_a_request_only_they_could_approve_is_not_told_to_wait_for_someone_else(
        tmp_path, counter) -> None:
    """alice, the only approver baton.yaml names, asked for a high-risk runbook and clicked Approve: she was told
    "someone else has to approve it", and waited for nobody (the card names "nobody else"). No card is posted: she
    is told at once why, and what to do."""
    async with _baton(tmp_path, write_config(tmp_path, counter, ["alice"])) as baton:
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1", event_id="e1",
                                                  user="alice", text="run restart service=web"))
        async def refusal() -> str | None:
            return next((text for text in await _bot_texts(baton, "1", 1) if "Nobody could ever" in text), None)

        told = await until(refusal, "alice told")
        assert "Nobody could ever approve it: it is high-risk, so someone other than you has to approve it" in told
        assert "Have someone else ask for it (you may approve theirs), or add another approver" in told
        await _no_card(baton)
        assert runs_in(counter) == []


@pytest.mark.parametrize(("approvers", "risk", "expected"), [
    # the card said "approvers: nobody else (not alice, who asked)", and bob was told to "add approvers in
    # baton.yaml", which names them for nothing here
    (["alice"], "high", "approve(): its only approver is alice, who asked for it: a high-risk request needs "
                        "someone else to approve it"),
    (["alice", "playground:alice"], "high", "its only approver is alice, who asked for it"),
    # Slack's user, on a card in the playground (or on Discord): no click there is ever his
    (["slack:U1"], "low", "approve(): none of its approvers (slack:U1) can click on playground, where its card "
                          "is posted"),
])
async def test_approve_whose_card_nobody_could_approve_fails_the_run_saying_so(
        tmp_path, config_path, approvers, risk, expected) -> None:
    """The graph's own approvers left nobody who could approve its card: it waited a day, its one approver
    told to withdraw it, everyone else that nobody can approve it."""
    def ask(_state: State) -> str:
        return str(approve("Drop the cache?", approvers=approvers, risk=risk).approved)

    async with _asked(tmp_path, config_path, GraphSpec(name="cache", graph=_asking(ask)), "cache") as baton:
        reply = await _reply(baton, "1")
        assert expected in reply, reply
        await _no_card(baton)


@pytest.mark.parametrize(("approvers", "risk"), [(["alice"], "low"), (["playground:bob"], "high"),
                                                 (["alice", "slack:U1", "bob"], "high")])
async def test_approve_whose_card_someone_may_approve_posts_it(tmp_path, config_path, approvers, risk) -> None:
    def ask(_state: State) -> str:
        return str(approve("Drop the cache?", approvers=approvers, risk=risk).approved)

    async with _asked(tmp_path, config_path, GraphSpec(name="cache", graph=_asking(ask)), "cache") as baton:
        assert "Drop the cache?" in await _reply(baton, "1")
        async with baton.db.read() as session:
            assert (await session.exec(select(Approval))).one().approvers == approvers


def _plain(value: object) -> GraphSpec:
    """A plain LangGraph graph whose one node calls ``interrupt(value)``."""
    def ask(_state: State) -> str:
        return str(interrupt(value)["approved"])

    return GraphSpec(name="plain", graph=_asking(ask))


@pytest.mark.parametrize(("value", "shown"), [
    # '{"msg": "Red\\u00e9marrer le caf\\u00e9 \\u2615"}': the approver read escapes, not the words
    ({"msg": "Redémarrer le café ☕"}, '"msg": "Redémarrer le café ☕"'),
    (["Grüße", {"région": "eu-west-3"}], '"région": "eu-west-3"'),
    # the card had no question at all, or read "null", and could be approved as it was
    ("", "The `plain` graph asks to go on (its interrupt() gave no question to show)."),
    (" \n", "The `plain` graph asks to go on (its interrupt() gave no question to show)."),
    (None, "The `plain` graph asks to go on (its interrupt() gave no question to show)."),
    # a key that is no text: "Something went wrong while handling this; it was logged.", and the run failed
    ({("web", "api"): "restart"}, "{('web', 'api'): 'restart'}"),
])
async def test_a_plain_interrupts_value_is_shown_on_its_card_as_written(tmp_path, config_path, value, shown) -> None:
    """A plain graph's ``interrupt(value)`` on its card: JSON with accents and emoji as written, a question
    even when the value is empty, and a value that is no JSON as Python writes it, not a broken run."""
    async with _asked(tmp_path, config_path, _plain(value), "plain") as baton:
        card = await _waiting_card(baton, 1)
        assert shown in card.summary, card.summary
        assert shown in await _reply(baton, "1")
        await baton.accept_click(InboundClick(platform="playground", channel="general", thread="1", event_id="c1",
                                              user="bob", approval_id=card.id, action="approve"))
        assert (await _bot_texts(baton, "1", 2))[-1] == "True"


@pytest.mark.parametrize("action", ["approve", "reject"])
async def test_a_plain_interrupt_that_asks_for_a_boolean_gets_the_decision_as_one(tmp_path, config_path, action) -> None:
    """``interrupt("Deploy?", response_schema=bool)``, LangGraph's way to say what a resume must be: the card
    was decided ("Approved by bob"), then the run failed with "ValidationError: 1 validation error for bool"
    (Baton resumed it with its dict)."""
    def ask(_state: State) -> str:
        return "deployed" if interrupt("Deploy?", response_schema=bool) else "not deployed"

    async with _asked(tmp_path, config_path, GraphSpec(name="plain", graph=_asking(ask)), "plain") as baton:
        card = await _waiting_card(baton, 1)
        await baton.accept_click(InboundClick(platform="playground", channel="general", thread="1", event_id="c1",
                                              user="bob", approval_id=card.id, action=action))
        texts = await _bot_texts(baton, "1", 2)
        assert texts[-1] == ("deployed" if action == "approve" else "not deployed"), texts
        assert await _runs(baton) == [("plain", "done", None)]


async def test_a_card_waiting_when_its_graph_is_made_high_risk_may_no_longer_be_approved_by_its_requester(
        tmp_path, config_path) -> None:
    """``graphs: {publish: {risk: high}}`` read again (SIGHUP) while alice's card waited: the card went on saying
    "risk low", and alice approved her own request, which baton.yaml now says someone else must."""
    config_path.write_text(config_path.read_text() + "graphs:\n  publish:\n    risk: low\n")

    def ask(_state: State) -> str:
        return "published" if interrupt("Publish the release notes?")["approved"] else "not published"

    async with _baton(tmp_path, config_path, GraphSpec(name="publish", graph=_asking(ask))) as baton:
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1", event_id="e1",
                                                  user="alice", text="publish"))
        card = await _waiting_card(baton, 1)
        assert card.risk == "low"
        config_path.write_text(config_path.read_text().replace("  publish:\n    risk: low\n",
                                                               "  publish:\n    risk: high\n"))
        assert await baton.reload_config()
        async with baton.db.read() as session:  # the card says so, before anyone clicks
            assert (await session.get(Approval, card.id)).risk == "high"
        await baton.accept_click(InboundClick(platform="playground", channel="general", thread="1", event_id="c1",
                                              user="alice", approval_id=card.id, action="approve"))

        async def told() -> str | None:
            async with baton.db.read() as session:
                return (await session.exec(select(PlaygroundMessage.text).where(
                    PlaygroundMessage.visible_to == "alice"))).first()

        assert "You asked for this high-risk action" in await until(told, "alice told why not")
        assert await _runs(baton) == [("publish", "waiting", None)]
