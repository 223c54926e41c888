"""What the thread is shown of a graph: its reply as it is, its error when it gave no reply, its whole question."""

from __future__ import annotations

from typing import Any, TypedDict

import pytest
from langgraph.types import interrupt
from sqlmodel import select

from bot import replies
from bot.registry import GraphSpec
from storage.models import Approval
from tests.test_graph_modules import _asked, _one_node, _reply


class State(TypedDict, total=False):
    text: str
    reply: str
    error: str


@pytest.mark.parametrize(("reply", "failed", "error", "shown"), [
    ("Deployed web.", False, None, "Deployed web."),
    (3, False, None, "3"),
    (["web", "api"], False, None, '```\n[\n  "web",\n  "api"\n]\n```'),  # was "Done."
    ({"restarted": "web"}, False, None, '```\n{\n  "restarted": "web"\n}\n```'),  # no message dict: was "Done."
    (None, False, None, "Done."),
    ([], False, None, "Done."),
    (None, True, "the deploy API said 503", "The run failed: the deploy API said 503"),  # was "The run failed."
    ("", True, True, "The run failed."),
])
def test_a_graphs_reply_is_shown_as_it_is(reply: Any, failed: bool, error: Any, shown: str) -> None:
    assert replies.result(reply, failed=failed, error=error).plain_text() == shown


async def test_a_graph_that_fails_with_an_error_and_no_reply_shows_the_error(tmp_path, config_path) -> None:
    def act(_state: State) -> dict[str, Any]:
        return {"error": "the deploy API said 503"}

    async with _asked(tmp_path, config_path, GraphSpec(name="deploy", graph=_one_node(act)), "deploy") as baton:
        assert await _reply(baton, "1") == "The run failed: the deploy API said 503"


async def test_a_plain_interrupt_longer_than_a_card_shows_its_whole_value(tmp_path, config_path) -> None:
    """interrupt(value) of more than a card's 3,000 characters was cut silently: the approver decided on a
    question whose end they never saw."""
    question = "Apply this plan?\n" + "step\n" * 1000 + "and finally: drop the old database"

    def ask(_state: State) -> State:
        return {"reply": str(interrupt(question))}

    async with _asked(tmp_path, config_path, GraphSpec(name="plan", graph=_one_node(ask)), "plan") as baton:
        card = await _reply(baton, "1")
        async with baton.db.read() as session:
            approval = (await session.exec(select(Approval))).one()
    assert approval.details == {"the whole question": question}
    assert len(approval.summary) <= 3000 and approval.summary.endswith("(cut here: the whole of it is below)")
    assert "and finally: drop the old database" in card, card[-300:]
