"""A review of bot/runtime.py, bot/kit.py and bot/registry.py from a graph author's side: what was wrong."""

from __future__ import annotations

import operator
from typing import Annotated, TypedDict

from langgraph.func import entrypoint, task
from langgraph.graph import END, START, StateGraph

from bot.kit import approve
from bot.messages import InboundClick
from bot.registry import GraphSpec
from tests.test_graph_authoring_hunt2 import _bot_texts, _runs, _waiting_card
from tests.test_graph_modules import _asked, _reply


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

