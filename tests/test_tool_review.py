"""A LangChain agent (``create_agent``) with ``HumanInTheLoopMiddleware`` as a graph: its tool reviews are cards.

Before, a card showed the middleware's request as raw JSON, and the click failed the run either way
("KeyError: 'decisions'": the middleware takes its own decisions back, not Baton's answer); in per-call mode
the click failed on the answer's validation. A graph on ``messages`` alone got ``{"text": ...}`` (its model
never saw the request) and replied "Done." instead of the agent's answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import HumanInTheLoopMiddleware

from bot import replies, tool_review
from bot.registry import GraphSpec
from storage.models import Approval
from tests.fake_models import ScriptedModel, calls
from tests.test_decision_truth import _decide
from tests.test_graph_authoring_hunt2 import _bot_texts, _runs, _waiting_card
from tests.test_graph_modules import _asked

RESTART = {"name": "restart", "args": {"service": "web"}, "id": "call-1"}
CLEAR = {"name": "clear_cache", "args": {"region": "eu"}, "id": "call-2"}


def _agent(tmp_path: Path, tool_calls: list[dict[str, Any]], ran: list[str], **middleware: Any) -> Any:
    script = tmp_path / "model.json"
    script.write_text(json.dumps([{"content": "", "tool_calls": tool_calls}, {"content": "All done."}]))

    def restart(service: str) -> str:
        """Restart a service (its processes stop for a few seconds)."""
        ran.append(f"restart {service}")
        return f"{service} restarted"

    def clear_cache(region: str) -> str:
        """Clear a region's cache."""
        ran.append(f"clear {region}")
        return f"{region} cleared"

    model = ScriptedModel(messages=iter(()), script_path=str(script))
    return create_agent(model, tools=[restart, clear_cache], middleware=[HumanInTheLoopMiddleware(**middleware)])


def _tool_messages(tmp_path: Path) -> list[str]:
    """What the model was told of its tool calls, on its second call."""
    return [said for said in calls(tmp_path / "model.json")[-1]["said"] if said.startswith("tool: ")]


@pytest.mark.parametrize("mode", ["batched", "per_call"])
@pytest.mark.parametrize("action", ["approve", "reject"])
async def test_an_agents_tool_review_is_a_card_and_its_decision_is_the_middlewares(
        tmp_path, config_path, mode, action) -> None:
    ran: list[str] = []
    agent = _agent(tmp_path, [RESTART], ran, interrupt_on={"restart": True}, interrupt_mode=mode)
    async with _asked(tmp_path, config_path, GraphSpec(name="agent", graph=agent), "agent restart web please") as baton:
        card = await _waiting_card(baton, 1)
        assert card.summary == "The agent wants to run `restart`.\n\nTool execution requires approval", card.summary
        assert card.details == {"service": "web"}, card.details
        assert calls(tmp_path / "model.json")[0]["said"] == ["human: restart web please"]  # the request, as words
        await _decide(baton, 1, action)
        texts = await _bot_texts(baton, "1", 2)
        assert texts[-1] == "All done.", texts
        assert await _runs(baton) == [("agent", "done", None)]
    told = _tool_messages(tmp_path)
    if action == "approve":
        assert ran == ["restart web"] and told == ["tool: web restarted"], (ran, told)
    else:
        assert ran == [] and len(told) == 1 and "bob rejected this in the chat" in told[0], (ran, told)


async def test_one_card_decides_every_call_of_a_batched_review(tmp_path, config_path) -> None:
    ran: list[str] = []
    agent = _agent(tmp_path, [RESTART, CLEAR], ran, interrupt_on={"restart": True, "clear_cache": True})
    async with _asked(tmp_path, config_path, GraphSpec(name="agent", graph=agent), "agent fix it") as baton:
        card = await _waiting_card(baton, 1)
        assert card.summary.startswith("The agent wants to run 2 tools: `restart`, `clear_cache`."), card.summary
        assert card.details == {"1. restart service": "web", "2. clear_cache region": "eu"}
        await _decide(baton, 1, "approve")
        assert (await _bot_texts(baton, "1", 2))[-1] == "All done."
    assert sorted(ran) == ["clear eu", "restart web"]


@pytest.mark.parametrize("mode", ["batched", "per_call"])
async def test_a_review_no_card_can_decide_fails_the_run_before_anyone_is_asked(tmp_path, config_path, mode) -> None:
    ran: list[str] = []
    agent = _agent(tmp_path, [RESTART], ran, interrupt_on={"restart": {"allowed_decisions": ["approve", "edit"]}},
                   interrupt_mode=mode)
    async with _asked(tmp_path, config_path, GraphSpec(name="agent", graph=agent), "agent restart web") as baton:
        reply = (await _bot_texts(baton, "1", 1))[-1]
        assert "the tool `restart` is reviewed with approve, edit allowed, not reject" in reply, reply
        assert [(graph, status) for graph, status, _error in await _runs(baton)] == [("agent", "failed")]
    assert ran == []


async def test_a_review_too_long_for_a_card_keeps_the_calls_arguments_below_the_whole_question(
        tmp_path, config_path) -> None:
    """The whole of a question longer than a card shows went into its details in place of the calls' arguments."""
    ran: list[str] = []
    agent = _agent(tmp_path, [RESTART], ran, interrupt_on={"restart": True}, description_prefix="Check this. " * 400)
    async with _asked(tmp_path, config_path, GraphSpec(name="agent", graph=agent), "agent restart web") as baton:
        card = await _waiting_card(baton, 1)
        assert card.summary.endswith("(cut here: the whole of it is below)"), card.summary[-80:]
        assert card.details["service"] == "web", card.details.keys()
        assert card.details["the whole question"].endswith("Check this.")


def test_a_calls_arguments_are_shown_one_a_line_text_as_it_is() -> None:
    """Shown as one line of JSON, a call's arguments ran off the card's right edge in the playground."""
    review = {"type": "tool_approval", "tool_call_id": "c1", "name": "scale", "description": "",
              "args": {"service": "web", "replicas": 3, "zones": ["eu-1", "eu-2"], "note": None}}
    summary, details = tool_review.question(review)
    assert summary == "The agent wants to run `scale`."
    assert details == {"service": "web", "replicas": "3", "zones": '["eu-1", "eu-2"]', "note": "null"}
    assert tool_review.question({**review, "args": {}}) == ("The agent wants to run `scale`.", {})


def test_a_value_of_several_lines_cannot_pass_for_details_of_its_own() -> None:
    """An argument the model wrote as ``"a\\nb: c"`` was shown as two details, ``note: a`` and ``b: c``."""
    _summary, details = tool_review.question({"type": "tool_approval", "tool_call_id": "c1", "name": "restart",
                                               "description": "", "args": {"service": "web",
                                                                           "note": "ok\nservice: db"}})
    card = replies.approval_card(Approval(run_id=1, thread_record_id=1, interrupt_id="i", graph="agent",
                                          summary="The agent wants to run `restart`.", details=details, risk="high",
                                          approvers=["bob"], requested_by="alice"))
    code = next(part.text for part in card.parts if part.kind == "code")
    assert code == "service: web\nnote: ok\n  service: db", code
    assert [line for line in code.splitlines() if not line.startswith(" ")] == ["service: web", "note: ok"]
