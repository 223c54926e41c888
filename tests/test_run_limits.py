"""A run's time limit (a graph's TIMEOUT, else BATON_RUN_TIMEOUT_SECONDS) and progress from subgraphs."""

from __future__ import annotations

import asyncio
from types import ModuleType

import pytest
from langgraph.graph import END, START, StateGraph
from sqlmodel import select

from bot.app import Baton
from bot.kit import progress
from bot.messages import InboundMessage
from bot.registry import GraphError, GraphRegistry, GraphSpec, _spec_from_module
from bot.settings import Settings
from storage.models import PlaygroundMessage, Run, ThreadRecord
from tests.support import until
from tests.test_graph_modules import State, _asked, _one_node, _reply


async def _hangs(_state: State) -> State:
    await asyncio.Event().wait()  # a call that never answers
    return {"reply": "never"}


async def _statuses(baton: Baton) -> tuple[list[str], list[str]]:
    async with baton.db.read() as session:
        runs = [run.status for run in (await session.exec(select(Run))).all()]
        records = [record.status for record in (await session.exec(select(ThreadRecord))).all()]
    return runs, records


async def test_a_run_longer_than_its_graphs_timeout_is_stopped_and_told(tmp_path, config_path) -> None:
    """A node waiting on a call that never answers kept its run and thread "running" for good (and status
    listed it for good), and the run was taken up again at every start."""
    spec = GraphSpec(name="stuck", graph=_one_node(_hangs), timeout=0.3)
    async with _asked(tmp_path, config_path, spec, "stuck") as baton:
        reply = await _reply(baton, "1")
        assert await _statuses(baton) == (["failed"], ["failed"])
    assert "`stuck` ran longer than its limit of 300ms, so I stopped it" in reply, reply
    assert "TIMEOUT" in reply


async def test_batons_run_timeout_applies_to_a_graph_without_its_own(tmp_path, config_path) -> None:
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'e.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground", BATON_RUN_TIMEOUT_SECONDS=0.3)
    async with Baton(settings) as baton:
        baton.registry.add(GraphSpec(name="stuck", graph=_one_node(_hangs)))
        await baton.accept_message(InboundMessage(
            platform="playground", channel="general", thread="1", event_id="e1", user="alice", text="stuck"))
        assert "ran longer than its limit of 300ms" in await _reply(baton, "1")
        assert await _statuses(baton) == (["failed"], ["failed"])


async def test_a_nodes_own_timeout_error_is_its_failure_not_the_limit(tmp_path, config_path) -> None:
    async def late(_state: State) -> State:
        raise TimeoutError("the deploy API did not answer in 10 s")

    async with _asked(tmp_path, config_path, GraphSpec(name="late", graph=_one_node(late), timeout=60), "late") as baton:
        reply = await _reply(baton, "1")
    assert "`late` failed in `act`:\n```\nTimeoutError: the deploy API did not answer in 10 s" in reply, reply


def test_runbooks_and_the_assistant_keep_their_commands_own_timeouts() -> None:
    """A runbook may run up to 24 h (its timeout in baton.yaml): the run limit must not cut it short."""
    registry = GraphRegistry.discover()
    assert registry.get("runbook").timeout is None  # type: ignore[union-attr]
    assert registry.get("assistant").timeout is None  # type: ignore[union-attr]
    assert registry.get("help").timeout == "default"  # type: ignore[union-attr]


@pytest.mark.parametrize(("value", "accepted"), [
    (90, 90.0), (0.5, 0.5), (None, None), ("soon", None), (0, None), (-1, None), (True, None), (float("nan"), None),
    (10 ** 9, None),
])
def test_timeout_setting_of_a_graph_module(value: object, accepted: object) -> None:
    module = ModuleType("graphs.limited")
    module.__file__ = "graphs/limited.py"
    module.graph = _one_node(_hangs)  # type: ignore[attr-defined]
    module.TIMEOUT = value  # type: ignore[attr-defined]
    if accepted is None and value is not None:
        with pytest.raises(GraphError, match="TIMEOUT must be a number of seconds above 0"):
            _spec_from_module("limited", module)
    else:
        assert _spec_from_module("limited", module).timeout == accepted


async def test_progress_in_a_subgraph_reaches_the_thread(tmp_path, config_path) -> None:
    """``progress()`` in a subgraph's node was dropped: only the outer graph's stream was read."""
    def inner(_state: State) -> State:
        progress("checked the inner step")
        return {"reply": "all done"}

    sub = StateGraph(State)
    sub.add_node("inner", inner)
    sub.add_edge(START, "inner")
    sub.add_edge("inner", END)
    outer = StateGraph(State)
    outer.add_node("sub", sub.compile())
    outer.add_edge(START, "sub")
    outer.add_edge("sub", END)
    async with _asked(tmp_path, config_path, GraphSpec(name="nested", graph=outer), "nested") as baton:
        async def said_all_done() -> list[str] | None:
            async with baton.db.read() as session:
                said = [row.text for row in (await session.exec(select(PlaygroundMessage).where(
                    PlaygroundMessage.thread_id == "1", PlaygroundMessage.is_bot))).all()]
            return said if "all done" in said else None

        # The progress message is posted before the reply: waiting for the first bot message (``_reply``)
        # found the progress alone whenever the reply was still in the outbox (a busy machine).
        said = await until(said_all_done, "the reply 'all done' in thread 1")
    assert any("checked the inner step" in text for text in said), said
