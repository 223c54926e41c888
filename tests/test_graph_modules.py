"""Writing a graph as the README says: what a graph author gets wrong gets a clear answer."""

from __future__ import annotations

import asyncio
import datetime
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy
from sqlmodel import select

from bot import replies
from bot.app import Baton
from bot.kit import effect
from bot.messages import InboundMessage
from bot.registry import GraphError, GraphRegistry, GraphSpec
from bot.settings import Settings
from storage.models import Effect, PlaygroundMessage, Run, ThreadRecord

GOOD_GRAPH = """
from typing import TypedDict
from langgraph.graph import END, START, StateGraph
class S(TypedDict, total=False):
    text: str
    reply: str
graph = StateGraph(S)
graph.add_node("x", lambda s: {"reply": "ok"})
graph.add_edge(START, "x")
graph.add_edge("x", END)
"""


def _package(tmp_path: Path, modules: dict[str, str]) -> str:
    """A graphs package of its own (unique name) holding ``modules``; its name."""
    name = f"graphs_under_test_{uuid.uuid4().hex[:8]}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text("")
    for module, text in modules.items():
        (root / f"{module}.py").write_text(text)
    sys.path.insert(0, str(tmp_path))
    return name


@pytest.fixture
def package(tmp_path: Path):  # type: ignore[no-untyped-def]
    made: list[str] = []

    def make(modules: dict[str, str]) -> str:
        made.append(_package(tmp_path, modules))
        return made[-1]

    yield make
    sys.path.remove(str(tmp_path)) if str(tmp_path) in sys.path else None
    for name in made:
        for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
            del sys.modules[module]


@pytest.mark.parametrize(("text", "expected"), [
    # each was a traceback through Baton's start-up (or `baton graphs`), naming neither the module nor the line
    ("import os\nimport no_such_library_here\n", "broken.py, line 2): ModuleNotFoundError: No module named 'no_such_library_here'"),
    ("x = 1\n\ndef f(:\n", "broken.py, line 3): SyntaxError"),
    ("def f():\n    raise KeyError('k')\nf()\n", "broken.py, line 2): KeyError: 'k'"),
    # each started, and failed only when someone asked for the graph in chat (or never said why)
    ("graph = 42\n", "`graph` must be a StateGraph builder or a compiled graph, not int"),
    (GOOD_GRAPH + "PATTERNS = ['([']\n", "PATTERNS: '([' is not a regular expression"),
    (GOOD_GRAPH + "PATTERNS = 'deploy'\n", "PATTERNS must be a list of regular expressions, not one string"),
])
def test_a_graph_module_that_cannot_be_used_is_named_with_the_reason(package, text, expected) -> None:
    name = package({"good": GOOD_GRAPH, "broken": text})
    with pytest.raises(GraphError) as error:
        GraphRegistry.discover(name)
    assert f"the graph module {name}.broken" in str(error.value)
    assert expected in str(error.value)


def test_a_graph_chat_cannot_reach_is_refused(package) -> None:
    """``@baton Deploy`` is looked up as ``deploy``: a module ``Deploy.py`` was listed and never ran."""
    name = package({"Deploy": GOOD_GRAPH})
    with pytest.raises(GraphError, match="name the module deploy.py"):
        GraphRegistry.discover(name)


def test_graphs_without_a_description_and_good_ones_are_found(package) -> None:
    name = package({"plain": GOOD_GRAPH, "_private": "raise SystemExit('never imported')\n"})
    registry = GraphRegistry.discover(name)
    assert registry.names() == ["plain"]
    assert registry.get("plain").description == ""  # type: ignore[union-attr]


class State(TypedDict, total=False):
    text: str
    reply: str


def _one_node(node: Any, retry: RetryPolicy | None = None) -> StateGraph:
    graph = StateGraph(State)
    graph.add_node("act", node, retry_policy=retry)
    graph.add_edge(START, "act")
    graph.add_edge("act", END)
    return graph


async def _reply(baton: Baton, thread: str, timeout: float = 20) -> str:
    async def bot_text() -> str:
        while True:
            async with baton.db.read() as session:
                found = (await session.exec(select(PlaygroundMessage).where(
                    PlaygroundMessage.thread_id == thread, PlaygroundMessage.is_bot))).all()
            if found:
                return found[-1].text
            await baton.outbox.wait("never-woken", 0.05)

    return await asyncio.wait_for(bot_text(), timeout)


@asynccontextmanager
async def _asked(tmp_path: Path, config_path: Path, spec: GraphSpec, text: str) -> AsyncIterator[Baton]:
    """A playground Baton with ``spec`` installed, asked ``text`` in thread "1" of #general by alice."""
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'e.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        baton.registry.add(spec)
        await baton.accept_message(InboundMessage(
            platform="playground", channel="general", thread="1", event_id="e1", user="alice", text=text))
        yield baton


async def _ledger(baton: Baton) -> list[tuple[str, str, Any]]:
    async with baton.db.read() as session:
        return [(row.name, row.status, row.result) for row in (await session.exec(select(Effect))).all()]


async def test_effect_takes_a_plain_function_off_the_event_loop(tmp_path, config_path) -> None:
    """The README's ``effect("rollback", lambda: do_rollback(...))`` with a plain ``do_rollback``: the
    rollback happened, then the run failed on ``await`` of its result ("object str can't be used in 'await'
    expression") and the ledger called it failed."""
    calls: list[str] = []

    def do_rollback(service: str) -> str:
        calls.append(threading.current_thread().name)
        return f"{service} is back at release 41"

    async def act(state: State) -> State:
        result = await effect("rollback", lambda: do_rollback(state["text"]))
        return {"reply": f"Rolled back: {result}"}

    async with _asked(tmp_path, config_path, GraphSpec(name="rollback", graph=_one_node(act), description="Roll back."),
                      "rollback web") as baton:
        assert await _reply(baton, "1") == "Rolled back: web is back at release 41"
        assert len(calls) == 1 and calls[0] != threading.main_thread().name  # not on the event loop's thread
        assert await _ledger(baton) == [("rollback", "done", "web is back at release 41")]


async def test_an_effect_whose_result_is_not_json_fails_the_run_with_the_reason(tmp_path, config_path) -> None:
    """A result the ledger cannot store (a datetime) left the thread "running" for good and answered
    "Something went wrong while handling this; it was logged."; the effect is not run again either way."""
    ran: list[int] = []

    async def stamp() -> datetime.datetime:
        ran.append(1)
        return datetime.datetime.now()

    async def act(_state: State) -> State:
        return {"reply": f"stamped {await effect('stamp', stamp)}"}

    async with _asked(tmp_path, config_path, GraphSpec(name="stamp", graph=_one_node(act), description="Stamp."),
                      "stamp") as baton:
        reply = await _reply(baton, "1")
        assert "side effect 'stamp' ran, but its result cannot be recorded" in reply, reply
        assert "datetime is not JSON serializable" in reply
        assert ran == [1]
        ledger = await _ledger(baton)
        assert [(name, status) for name, status, _ in ledger] == [("stamp", "failed")]


def test_a_compiled_graph_with_a_static_breakpoint_is_refused(package) -> None:
    """``compile(interrupt_before=["act"])``: the run stopped at the breakpoint and Baton answered "Done."
    without running ``act``, and the thread was marked done."""
    name = package({"staged": GOOD_GRAPH + "graph = graph.compile(interrupt_before=['x'])\n"})
    with pytest.raises(GraphError, match="interrupt_before/interrupt_after, which Baton cannot resume"):
        GraphRegistry.discover(name)


def test_a_graph_named_as_batons_run_command_is_refused(package) -> None:
    """``@baton run`` is Baton's own command, read before any graph: a module ``run.py`` was listed by
    ``baton graphs`` and never reached."""
    name = package({"run": GOOD_GRAPH})
    with pytest.raises(GraphError, match="`run` is a command of Baton's own .* name the module otherwise"):
        GraphRegistry.discover(name)


async def test_a_run_whose_handling_breaks_off_is_failed_not_left_running(tmp_path, config_path, monkeypatch) -> None:
    """The handling broke off after the run (it was a graph's reply that is no message, which now fails the run
    by itself; here the reply cannot be made at all): the requester got "Something went wrong", but the run and
    the thread stayed "running" for good (``status`` listed them as running, the duplicate check answered "is
    running")."""

    async def act(_state: State) -> State:
        return {"reply": "fine"}

    def unforeseen(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the reply could not be made")

    monkeypatch.setattr(replies, "result", unforeseen)

    async with _asked(tmp_path, config_path, GraphSpec(name="bogus", graph=_one_node(act), description="A broken reply."),
                      "bogus") as baton:
        assert await _reply(baton, "1") == "Something went wrong while handling this; it was logged."
        async with baton.db.read() as session:
            run = (await session.exec(select(Run))).one()
            record = (await session.exec(select(ThreadRecord))).one()
        assert (run.status, record.status) == ("failed", "failed")
        assert run.error is not None and "RuntimeError" in run.error


async def test_help_lists_a_graph_without_a_description_without_a_dangling_dash(tmp_path, config_path) -> None:
    async def act(_state: State) -> State:
        return {"reply": "done"}

    async with _asked(tmp_path, config_path, GraphSpec(name="plain", graph=_one_node(act), example="plain"),
                      "help") as baton:
        lines = (await _reply(baton, "1")).splitlines()
    assert "• `plain`" in lines and not any(line.startswith("• `plain` —") for line in lines)
