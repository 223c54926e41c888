"""Writing graphs of one's own as the README says (a second round): what a graph author met that was wrong."""

from __future__ import annotations

import asyncio
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy
from sqlmodel import select

from bot.app import Baton
from bot.kit import effect
from bot.messages import InboundMessage
from bot.registry import GraphSpec, _spec_from_module
from storage.models import PlaygroundMessage, Run
from tests.test_graph_authoring_hunt import _module
from tests.test_graph_modules import State, _asked, _one_node, _reply


async def _bot_texts(baton: Baton, thread: str, count: int, timeout: float = 20) -> list[str]:
    """The bot's messages in ``thread`` once there are ``count`` of them."""
    async def texts() -> list[str]:
        while True:
            async with baton.db.read() as session:
                found = (await session.exec(select(PlaygroundMessage).where(
                    PlaygroundMessage.thread_id == thread, PlaygroundMessage.is_bot))).all()
            if len(found) >= count:
                return [message.text for message in found]
            await baton.outbox.wait("never-woken", 0.05)

    return await asyncio.wait_for(texts(), timeout)


async def _runs(baton: Baton) -> list[tuple[str, str, str | None]]:
    async with baton.db.read() as session:
        return [(run.graph, run.status, run.error) for run in (await session.exec(select(Run).order_by(Run.id))).all()]


def _echo_spec() -> GraphSpec:
    """``make_input`` returning what the request's text names: a dict, ``None`` or text."""
    def make_input(_request: Any, text: str) -> Any:
        return {"none": None, "text": "hello"}.get(text.split()[-1], {"text": text})

    def act(state: State) -> State:
        return {"reply": f"ran with {state['text']}"}

    return _spec_from_module("echo", _module(graph=_one_node(act), make_input=make_input))


async def test_make_input_returning_none_runs_nothing_instead_of_replaying_the_last_reply(tmp_path, config_path) -> None:
    """``None`` is LangGraph's "go on from where the thread stopped": asked again in a thread where the graph
    had run, the request was answered with the earlier run's reply ("ran with first"), its run recorded
    as done, and nothing ran."""
    async with _asked(tmp_path, config_path, _echo_spec(), "echo first") as baton:
        assert await _reply(baton, "1") == "ran with first"
        await baton.accept_message(InboundMessage(
            platform="playground", channel="general", thread="1", event_id="e2", user="alice", text="echo none"))
        texts = await _bot_texts(baton, "1", 2)
        assert "`echo` could not read this request: its make_input returned None" in texts[1], texts
        assert "Nothing was run" in texts[1]
        assert await _runs(baton) == [("echo", "done", None)]


async def test_make_input_returning_text_for_a_state_graph_is_refused_before_a_run(tmp_path, config_path) -> None:
    """A ``StateGraph`` takes a dict of its state: text from ``make_input`` started a run that failed with
    LangGraph's "InvalidUpdateError: Expected dict, got hello", naming neither make_input nor the fix."""
    async with _asked(tmp_path, config_path, _echo_spec(), "echo text") as baton:
        reply = await _reply(baton, "1")
        assert "`echo` could not read this request: its make_input returned str, not the graph's input" in reply, reply
        assert await _runs(baton) == []


class Failing(TypedDict, total=False):
    text: str
    reply: str
    error: Any


async def test_an_error_that_is_not_text_fails_the_run_showing_it(tmp_path, config_path) -> None:
    """``return {"error": {"code": 3, ...}}``: storing the run's outcome failed ("Error binding parameter:
    type 'dict' is not supported"), and the thread read "Something went wrong while handling this; it was
    logged." instead of the graph's error."""
    def act(_state: Failing) -> Failing:
        return {"error": {"code": 3, "why": "disk full"}}

    graph = StateGraph(Failing)
    graph.add_node("act", act)
    graph.add_edge(START, "act")
    graph.add_edge("act", END)
    async with _asked(tmp_path, config_path, GraphSpec(name="failing", graph=graph), "failing") as baton:
        reply = await _reply(baton, "1")
        assert reply == 'The run failed: {"code": 3, "why": "disk full"}', reply
        assert await _runs(baton) == [("failing", "failed", '{"code": 3, "why": "disk full"}')]


async def test_an_effects_result_is_the_same_when_the_node_runs_again(tmp_path, config_path) -> None:
    """The node that made the effect got its result as ``fn`` returned it (a tuple, a dict keyed by 1); the
    node run again (a retry, a resume) got it from the ledger's JSON (a list, the key "1"): code that
    worked on the first run broke on the second."""
    seen: list[str] = []

    async def act(_state: State) -> State:
        pair = await effect("pair", lambda: (1, 2))
        by_id = await effect("by_id", lambda: {1: "web"})
        seen.append(f"{pair!r} {by_id!r}")
        if len(seen) == 1:
            raise ConnectionError("flaky")  # retried: the effects' recorded results come back
        return {"reply": seen[-1]}

    retry = RetryPolicy(max_attempts=2, initial_interval=0.01, jitter=False, retry_on=ConnectionError)
    async with _asked(tmp_path, config_path, GraphSpec(name="pairs", graph=_one_node(act, retry)), "pairs") as baton:
        assert await _reply(baton, "1") == "[1, 2] {'1': 'web'}"
    assert seen == ["[1, 2] {'1': 'web'}"] * 2, seen
