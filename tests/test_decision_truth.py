"""A Reject reads as false: ``if interrupt(...):`` (LangGraph's own pattern) and ``if approve(...):`` did not
stop after a Reject, because the decision they got (a dict, a dataclass) was true whatever the card said."""

from __future__ import annotations

import pytest
from langgraph.types import interrupt

from bot.app import Baton
from bot.approvals import Answer, AnswerKeepingSerializer
from bot.kit import approve
from bot.messages import InboundClick, InboundMessage
from bot.registry import GraphSpec
from bot.settings import Settings
from tests.test_graph_authoring_hunt2 import _asking, _bot_texts, _runs, _waiting_card
from tests.test_graph_modules import State, _asked


async def _decide(baton, count: int, action: str) -> None:
    card = await _waiting_card(baton, count)
    await baton.accept_click(InboundClick(platform="playground", channel="general", thread="1", event_id=f"c{count}",
                                          user="bob", approval_id=card.id, action=action))


@pytest.mark.parametrize("action", ["approve", "reject"])
async def test_a_plain_graphs_if_interrupt_goes_on_only_when_approved(tmp_path, config_path, action) -> None:
    """LangGraph's documented ``if interrupt(...):``: "deployed" after a Reject too (the decision, a dict with
    its keys, is true)."""
    def ask(_state: State) -> str:
        decision = interrupt("Deploy web?")
        return f"deployed (by {decision['by']})" if decision else f"not deployed ({decision['by']} rejected it)"

    async with _asked(tmp_path, config_path, GraphSpec(name="plain", graph=_asking(ask)), "plain") as baton:
        await _decide(baton, 1, action)
        texts = await _bot_texts(baton, "1", 2)
        assert texts[-1] == ("deployed (by bob)" if action == "approve" else "not deployed (bob rejected it)"), texts
        assert await _runs(baton) == [("plain", "done", None)]


@pytest.mark.parametrize("action", ["approve", "reject"])
async def test_a_graphs_if_approve_goes_on_only_when_approved(tmp_path, config_path, action) -> None:
    """``if approve(...):``: ``Decision`` was a dataclass, true after a Reject too."""
    def ask(_state: State) -> str:
        return "restarted" if approve("Restart web?", risk="low") else "left alone"

    async with _asked(tmp_path, config_path, GraphSpec(name="kit", graph=_asking(ask)), "kit") as baton:
        await _decide(baton, 1, action)
        texts = await _bot_texts(baton, "1", 2)
        assert texts[-1] == ("restarted" if action == "approve" else "left alone"), texts


async def test_an_earlier_answer_read_back_from_the_checkpoint_is_still_false_after_a_reject(
        database_url, config_path) -> None:
    """A node asking twice runs again from its start when the second card is decided, and LangGraph reads the
    first answer back from the checkpoint: stored, it was a plain dict, true although that card was rejected."""
    def ask(_state: State) -> str:
        first = interrupt("Drain web-1?")
        second = interrupt("Drain web-2?")
        return f"web-1 {bool(first)}, web-2 {bool(second)}"

    settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        baton.registry.add(GraphSpec(name="twice", graph=_asking(ask)))
        await baton.accept_message(InboundMessage(
            platform="playground", channel="general", thread="1", event_id="e1", user="alice", text="twice"))
        await _decide(baton, 1, "reject")
        await _decide(baton, 2, "approve")
        texts = await _bot_texts(baton, "1", 3)
        assert texts[-1] == "web-1 False, web-2 True", texts


def test_the_serializer_reads_back_answers_and_leaves_other_values_alone() -> None:
    serializer = AnswerKeepingSerializer()
    rejected = Answer(approved=False, by="bob", at="2026-12-06T21:00:00+00:00", approval_id="a1")
    back = serializer.loads_typed(serializer.dumps_typed([rejected, "text", {"approved": False}]))
    assert back == [rejected, "text", {"approved": False}]
    assert [type(item) for item in back] == [Answer, str, dict]
    assert not back[0] and back[2]
    alone = serializer.loads_typed(serializer.dumps_typed(rejected))
    assert type(alone) is Answer and not alone
    approved = serializer.loads_typed(serializer.dumps_typed(Answer(rejected, approved=True)))
    assert approved and approved["by"] == "bob"
    state = {"reply": "done", "approved": True}
    assert type(serializer.loads_typed(serializer.dumps_typed(state))) is dict
