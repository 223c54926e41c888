"""A review of bot/runtime.py, bot/kit.py and bot/registry.py from a graph author's side: what was wrong."""

from __future__ import annotations

import operator
from typing import Annotated, TypedDict

from langgraph.errors import GraphInterrupt
from langgraph.func import entrypoint, task
from langgraph.graph import END, START, StateGraph

from bot.kit import approve, effect
from bot.messages import InboundClick
from bot.registry import GraphSpec
from tests.test_graph_authoring_hunt2 import _bot_texts, _runs, _waiting_card
from tests.test_graph_modules import State, _asked, _ledger, _one_node, _reply


class Branches(TypedDict, total=False):
    text: str
    reply: str
    done: Annotated[list[str], operator.add]


async def test_approve_whose_stop_one_branch_catches_fails_the_run_beside_another_branchs_card(
        tmp_path, config_path) -> None:
    """``try: approve(...) except Exception:`` in one of two parallel branches, the other asking as it should: only
    a run with no question waiting at all was failed, so one card was posted ("Restart web?"), the catching branch
    went on as if "Drop the cache?" had been decided, and nobody was ever asked it."""
    def asks(_state: Branches) -> Branches:
        return {"done": [f"restarted={approve('Restart web?', risk='low').approved}"]}

    def careless(_state: Branches) -> Branches:
        try:
            approve("Drop the cache?", risk="low")
        except Exception:  # what a careful-looking node does around a call it expects may fail
            pass
        return {"done": ["dropped the cache"]}

    graph = StateGraph(Branches)
    graph.add_node("asks", asks)
    graph.add_node("careless", careless)
    graph.add_node("end", lambda state: {"reply": ", ".join(sorted(state["done"]))})
    graph.add_edge(START, "asks")
    graph.add_edge(START, "careless")
    graph.add_edge(["asks", "careless"], "end")
    graph.add_edge("end", END)
    async with _asked(tmp_path, config_path, GraphSpec(name="branches", graph=graph), "branches") as baton:
        reply = await _reply(baton, "1")
        assert "approve('Drop the cache?') was asked of nobody: the graph caught the GraphInterrupt" in reply, reply
        [(name, status, _error)] = await _runs(baton)
        assert (name, status) == ("branches", "failed")


async def test_tasks_started_together_still_ask_one_after_another(tmp_path, config_path) -> None:
    """The check above must not take a functional-API ``@task`` whose question LangGraph keeps for later (tasks
    started together are asked one after another) for one the graph caught."""
    @task
    def ask(service: str) -> bool:
        return approve(f"Restart {service}?", risk="low").approved

    @entrypoint()
    def restart(text: str) -> str:
        web, api = ask("web"), ask("api")
        return f"web={web.result()}, api={api.result()}"

    async with _asked(tmp_path, config_path, GraphSpec(name="restart", graph=restart), "restart") as baton:
        for number in (1, 2):
            approval = await _waiting_card(baton, number)
            await baton.accept_click(InboundClick(platform="playground", channel="general", thread="1",
                                                  event_id=f"c{number}", user="bob", approval_id=approval.id,
                                                  action="approve"))
        texts = await _bot_texts(baton, "1", 3)
        assert "web=True, api=True" in texts, texts
        assert await _runs(baton) == [("restart", "done", None)]


async def test_an_effect_named_as_anothers_repeat_runs_too(tmp_path, config_path) -> None:
    """A node paging twice (``effect("page")`` in a loop) and then ``effect("page#2")``: the second page's key was
    ``...|page#2``, which the effect named ``page#2`` took for its own, so it never ran and returned "page 2"."""
    ran: list[str] = []

    async def act(_state: State) -> State:
        for number in (1, 2):
            await effect("page", lambda number=number: ran.append(f"page {number}") or f"page {number}")
        return {"reply": await effect("page#2", lambda: ran.append("escalate") or "escalated")}

    async with _asked(tmp_path, config_path, GraphSpec(name="pages", graph=_one_node(act)), "pages") as baton:
        assert await _reply(baton, "1") == "escalated"
        assert ran == ["page 1", "page 2", "escalate"]
        assert sorted(await _ledger(baton)) == [("page", "done", "page 1"), ("page", "done", "page 2"),
                                                ("page#2", "done", "escalated")]


async def test_a_graph_stopping_itself_with_no_question_is_not_done(tmp_path, config_path) -> None:
    """A node raising LangGraph's ``GraphInterrupt()`` itself, with no question: the run stopped there (nothing after
    it ran), and Baton reported it "Done.", the run done, though no card asked anything that could go on."""
    async def act(_state: State) -> State:
        raise GraphInterrupt()

    async with _asked(tmp_path, config_path, GraphSpec(name="halts", graph=_one_node(act)), "halts") as baton:
        reply = await _reply(baton, "1")
        assert "stopped at `act` with no question" in reply, reply
        [(name, status, _error)] = await _runs(baton)
        assert (name, status) == ("halts", "failed")
