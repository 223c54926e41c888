"""A graph author stressing Baton's LangGraph runtime: what a graph does wrong fails its run, never Baton."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sqlite3
import sys
import threading
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.func import entrypoint
from langgraph.graph import END, START, StateGraph
from psycopg.conninfo import conninfo_to_dict
from sqlmodel import select

from bot import kit
from bot.messages import InboundMessage
from bot.registry import GraphError, GraphRegistry, GraphSpec, NodeExited, _spec_from_module
from bot.runtime import GraphRuntime, RunServices, Services
from storage.checkpointer import open_checkpointer, postgres_conninfo
from storage.models import Run
from tests.support import ROOT, BatonProcess, wait_for
from tests.test_graph_modules import GOOD_GRAPH, State, _asked, _one_node, _reply, package  # noqa: F401

TASK_EXIT_GRAPH = """
import sys
from langgraph.func import entrypoint, task

@task
def parse(text):
    sys.exit("usage: taskexit <service>")  # argparse, in a @task of the functional API

@task
async def interrupted(text):
    raise KeyboardInterrupt

@entrypoint()
async def graph(inputs):
    if inputs["text"] == "async":
        return {"reply": await interrupted(inputs["text"])}
    return {"reply": await parse(inputs["text"])}
"""

EDGE_EXIT_GRAPH = """
import asyncio
import sys
from typing import TypedDict
from langchain_core.runnables import RunnableLambda
from langgraph.graph import END, START, StateGraph

class S(TypedDict, total=False):
    text: str
    reply: str

def route(state):
    if state["text"] == "route":
        raise KeyboardInterrupt  # in a conditional edge's function
    return state["text"]

async def spawn(state):
    async def later():
        sys.exit(4)
    await asyncio.create_task(later())  # a task the node starts itself
    return {"reply": "never"}

def runnable(state):
    sys.exit("a Runnable node")

async def generator(state):
    raise GeneratorExit

graph = StateGraph(S)
graph.add_node("spawn", spawn)
graph.add_node("runnable", RunnableLambda(runnable))
graph.add_node("generator", generator)
graph.add_conditional_edges(START, route, ["spawn", "runnable", "generator"])
for name in ("spawn", "runnable", "generator"):
    graph.add_edge(name, END)
"""


@pytest.fixture
def exiting_graphs(tmp_path: Path) -> Path:
    """A working directory whose ``graphs/`` holds Baton's own graphs and two that exit where no node function
    of theirs is (``python -m bot.cli run`` finds it first)."""
    shutil.copytree(ROOT / "graphs", tmp_path / "graphs", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "graphs" / "taskexit.py").write_text(TASK_EXIT_GRAPH)
    (tmp_path / "graphs" / "edgeexit.py").write_text(EDGE_EXIT_GRAPH)
    return tmp_path


def _run_statuses(database: Path) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(database)) as connection:
        return connection.execute("SELECT graph, status FROM runs ORDER BY id").fetchall()


def test_an_exit_outside_a_node_function_fails_its_run_not_baton(exiting_graphs, config_path, sqlite_url) -> None:
    """``sys.exit()`` or ``KeyboardInterrupt`` in a ``@task``, a conditional edge, a Runnable node or a task a node
    started stopped the whole ``baton run`` (asyncio re-raises them out of the event loop from any task); a
    request handled again at the next start stopped it again. A real SIGINT still stops Baton in order."""
    baton = BatonProcess(sqlite_url, config_path, exiting_graphs, exec_=True).start()
    try:
        chat = baton.client()
        asked = [("taskexit web", "usage: taskexit <service>"), ("taskexit async", "KeyboardInterrupt"),
                 ("edgeexit route", "KeyboardInterrupt"), ("edgeexit spawn", "SystemExit: 4"),
                 ("edgeexit runnable", "a Runnable node"), ("edgeexit generator", "failed")]
        for text, reason in asked:
            thread = chat.ask(f"@baton {text}")
            reply = chat.wait_reply(thread, f"`{text.split()[0]}` failed")
            assert reason in reply["text"], (text, reply["text"])
            assert baton.process is not None and baton.process.poll() is None, text
        assert "help" in chat.wait_reply(chat.ask("@baton help"), "taskexit")["text"]
        database = Path(sqlite_url.removeprefix("sqlite:///"))
        statuses = wait_for(lambda: [s for s in _run_statuses(database) if s[0] != "help"] if all(
            status != "running" for _, status in _run_statuses(database)) else None, what="every run finished")
        assert statuses == [(text.split()[0], "failed") for text, _ in asked]
        assert baton.process is not None
        baton.process.send_signal(signal.SIGINT)
        baton.process.wait(20)
    finally:
        baton.stop()
    assert "Application shutdown complete" in baton.log.read_text()  # stopped in order, not killed


async def test_make_input_that_calls_sys_exit_refuses_the_request_not_baton(tmp_path, config_path) -> None:
    """``make_input`` reading its arguments with argparse, which calls ``sys.exit()`` on ones it cannot read: it
    runs in Baton's own handling of the message, outside any graph, and stopped ``baton run``."""
    def make_input(_request: Any, text: str) -> dict[str, Any]:
        if not text.isdigit():
            sys.exit("usage: scale <replicas>")
        return {"text": text}

    async def act(state: State) -> State:
        return {"reply": f"scaled to {state['text']}"}

    module = ModuleType("graphs_runtime_hunt")
    module.__file__ = "graphs_runtime_hunt.py"
    module.__dict__.update(graph=_one_node(act), make_input=make_input)
    async with _asked(tmp_path, config_path, _spec_from_module("scale", module), "scale lots") as baton:
        reply = await _reply(baton, "1")
    assert "`scale` could not read this request: usage: scale <replicas>. Nothing was run." in reply, reply


UNCOMPILABLE = GOOD_GRAPH.replace('graph.add_edge(START, "x")\n', "")
SUBGRAPH_WITHOUT_CHECKPOINTS = GOOD_GRAPH + """
outer = StateGraph(S)
outer.add_node("inner", graph.compile(checkpointer=False))
outer.add_edge(START, "inner")
outer.add_edge("inner", END)
graph = outer
"""


@pytest.mark.parametrize(("text", "expected"), [
    # listed by `baton graphs` and help, and failed at every request ("ValueError: Graph must have an entrypoint")
    (UNCOMPILABLE, "`graph` does not compile: Graph must have an entrypoint"),
    (GOOD_GRAPH.replace('graph.add_edge("x", END)', 'graph.add_edge("x", "y")'),
     "`graph` does not compile: Found edge ending at unknown node `y`"),
    # every run failed with "AttributeError: 'AsyncPregelLoop' object has no attribute '_put_checkpoint_fut'"
    (SUBGRAPH_WITHOUT_CHECKPOINTS, "its subgraph `inner` is compiled with checkpointer=False"),
    (SUBGRAPH_WITHOUT_CHECKPOINTS + "graph = graph.compile()\n", "its subgraph `inner` is compiled with checkpointer=False"),
])
def test_a_graph_that_cannot_run_is_refused_at_start(package, text, expected) -> None:
    name = package({"deploy": text})
    with pytest.raises(GraphError, match=re.escape(expected)):
        GraphRegistry.discover(name)


async def test_a_subgraph_compiled_without_a_checkpointer_runs(tmp_path, config_path, package) -> None:
    """What the refusal above tells the author to do works: the subgraph shares Baton's checkpointer."""
    name = package({"deploy": SUBGRAPH_WITHOUT_CHECKPOINTS.replace("checkpointer=False", "")})
    async with _asked(tmp_path, config_path, GraphRegistry.discover(name).get("deploy"), "deploy") as baton:
        assert await _reply(baton, "1") == "ok"


def test_a_graph_module_hidden_by_a_package_of_the_same_name_is_named(package, tmp_path) -> None:
    """``graphs/deploy.py`` beside a ``graphs/deploy/`` package: Python imports the package, and the module the
    author was editing was silently never used (help showed the package's description, chat ran its graph)."""
    name = package({"deploy": GOOD_GRAPH})
    (tmp_path / name / "deploy").mkdir()
    (tmp_path / name / "deploy" / "__init__.py").write_text(GOOD_GRAPH)
    with pytest.raises(GraphError, match=re.escape(f"{name}/deploy.py is hidden by the package {name}/deploy/")):
        GraphRegistry.discover(name)


def test_a_graph_module_slow_to_import_is_named_while_it_imports(package, monkeypatch, caplog) -> None:
    """A module waiting at import (a network call that never answers, a lock): ``baton run`` waited for it
    without a word, /healthz never answered, and nothing said which module or why."""
    monkeypatch.setattr("bot.registry.SLOW_IMPORT_SECONDS", 0.2)
    name = package({"deploy": "import time\ntime.sleep(1.5)\n" + GOOD_GRAPH, "quick": GOOD_GRAPH})
    with caplog.at_level("WARNING", logger="bot.registry"):
        assert GraphRegistry.discover(name).names() == ["deploy", "quick"]
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 1, said  # the quick one is not named
    assert f"importing the graph module {name}.deploy" in said[0] and "deploy.py" in said[0], said


async def test_forget_deletes_the_checkpoints_of_a_graph_uninstalled_since_it_ran(tmp_path) -> None:
    """``forget`` deleted the checkpoints of the installed graphs only: a thread whose graph was uninstalled (or
    renamed) since it ran kept its checkpoints for good, though the pruning marked it pruned."""
    async def act(_state: State) -> State:
        return {"reply": "ok"}

    gone = GraphSpec(name="gone", graph=_one_node(act))
    async with open_checkpointer(f"sqlite:///{tmp_path / 'f.db'}") as checkpointer:
        before = GraphRuntime(GraphRegistry([gone]), checkpointer)
        context = RunServices(Services(db=None, config=None, registry=before.registry), kit.Request(  # type: ignore[arg-type]
            platform="playground", channel="general", thread="1", user="alice", text="gone"), None)

        async def no_progress(_text: str) -> None:
            return None

        assert (await before.run(gone, "t1", {"text": ""}, context, no_progress)).values["reply"] == "ok"
        after = GraphRuntime(GraphRegistry([]), checkpointer)  # the next start, without the graph
        config = after.config_for("t1", "gone")
        await after.forget("t1")
        assert await checkpointer.aget_tuple(config) is not None  # not installed: not a graph forget knows of
        await after.forget("t1", ["gone", "help"])
        assert await checkpointer.aget_tuple(config) is None


def test_a_conditional_edge_that_calls_sys_exit_fails_in_its_own_function() -> None:
    """Where Python starts LangGraph's tasks eagerly (3.12 and later), no task factory sees them: the registry's
    wrapping must catch a conditional edge's ``sys.exit()`` itself, as it does a node's."""
    def route(_state: State) -> str:
        sys.exit("no such service")

    graph = StateGraph(State)
    graph.add_node("act", lambda _state: {"reply": "never"})
    graph.add_conditional_edges(START, route, ["act"])
    graph.add_edge("act", END)
    compiled = GraphSpec(name="route", graph=graph).compile(InMemorySaver())
    with pytest.raises(NodeExited, match="SystemExit: no such service"):
        compiled.invoke({"text": "web"}, {"configurable": {"thread_id": "1"}})  # no event loop: no task factory


class _Abort(BaseException):
    """A library's exception that is no ``Exception`` (pytest's ``Failed``, gevent's ``GreenletExit``...)."""


async def test_a_node_raising_a_base_exception_fails_its_run_once(tmp_path, config_path) -> None:
    """Not an ``Exception``, it went past the run's handling to the thread's drain, which took it for Baton
    stopping: the sweeper ran the node again and again, and the fourth time the thread read "Baton stopped 4
    times while this `abort` run was under way", though Baton never stopped."""
    ran: list[int] = []

    async def act(_state: State) -> State:
        ran.append(1)
        raise _Abort("the check gave up")

    async with _asked(tmp_path, config_path, GraphSpec(name="abort", graph=_one_node(act)), "abort") as baton:
        reply = await _reply(baton, "1")
        async with baton.db.read() as session:
            run = (await session.exec(select(Run))).one()
    assert "`abort` failed:\n```\nNodeExited: a node raised _Abort: the check gave up" in reply, reply
    assert (run.status, run.takeovers, ran) == ("failed", 0, [1])


@pytest.mark.parametrize(("returned", "expected"), [("Restarted web.", "Restarted web."), (3, "3"),
                                                    (["web", "api"], '"web"')])
async def test_an_entrypoint_returning_no_dict_replies_with_what_it_returned(tmp_path, config_path, returned,
                                                                             expected) -> None:
    """``@entrypoint`` returning text (the functional API's natural way to end): the run did its work, then was
    failed with "ValueError: dictionary update sequence element #0 has length 1; 2 is required"."""
    @entrypoint()
    async def restart(_inputs: dict[str, Any]) -> Any:
        return returned

    async with _asked(tmp_path, config_path, GraphSpec(name="restart", graph=restart), "restart web") as baton:
        reply = await _reply(baton, "1")
        async with baton.db.read() as session:
            run = (await session.exec(select(Run))).one()
    assert expected in reply and run.status == "done", (reply, run.status)


async def test_a_graph_added_again_under_its_name_runs_as_added(tmp_path, config_path) -> None:
    """``GraphRegistry.add`` of a new version of a graph that had run once: every run after it still ran the first
    version (the runtime kept what it had compiled under the name)."""
    def answering(word: str) -> StateGraph:
        async def act(_state: State) -> State:
            return {"reply": word}
        return _one_node(act)

    async with _asked(tmp_path, config_path, GraphSpec(name="version", graph=answering("first")), "version") as baton:
        assert await _reply(baton, "1") == "first"
        baton.registry.add(GraphSpec(name="version", graph=answering("second")))
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="2", event_id="e2",
                                                  user="alice", text="version force"))
        assert await _reply(baton, "2") == "second"


def _waiting_for(release: threading.Event) -> StateGraph:
    def wait(_state: State) -> State:  # a plain node whose call never answers (requests.get without a timeout)
        release.wait(60)
        return {"reply": "late"}
    return _one_node(wait)


async def test_plain_nodes_that_never_return_hold_no_thread_baton_needs(tmp_path, config_path) -> None:
    """Plain nodes ran in the event loop's default executor (6 threads on 2 cores): a few waiting on calls that
    never answer, their runs stopped by their time limit, held every thread; each later plain node waited for good,
    and so did Baton's own use of it (its HTTP clients' DNS lookups: Slack heard nothing more)."""
    release = threading.Event()
    executor_size = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor
    try:
        async with _asked(tmp_path, config_path, GraphSpec(name="quick", graph=_one_node(lambda _s: {"reply": "quick"})),
                          "help") as baton:
            baton.registry.add(GraphSpec(name="stuck", graph=_waiting_for(release), timeout=0.2))
            for number in range(executor_size):
                await baton.accept_message(InboundMessage(platform="playground", channel="general", thread=f"s{number}",
                                                          event_id=f"s{number}", user="alice", text=f"stuck {number}"))
            for number in range(executor_size):
                assert "ran longer than its limit" in await _reply(baton, f"s{number}")
            await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo("localhost", 80), 5)
            await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="q",
                                                      event_id="q", user="alice", text="quick"))
            assert await _reply(baton, "q", timeout=10) == "quick"
    finally:
        release.set()


def test_ctrl_c_stops_baton_while_a_plain_node_never_returns(tmp_path, config_path, sqlite_url) -> None:
    """SIGINT (Ctrl-C) with a plain node waiting for good: uvicorn shut down, then the process waited for that
    node's thread at its exit, for ever."""
    shutil.copytree(ROOT / "graphs", tmp_path / "graphs", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "graphs" / "stuck.py").write_text(STUCK_GRAPH)
    baton = BatonProcess(sqlite_url, config_path, tmp_path, exec_=True).start()
    try:
        chat = baton.client()
        chat.wait_reply(chat.ask("@baton stuck"), "ran longer than its limit")
        assert baton.process is not None
        baton.process.send_signal(signal.SIGINT)
        assert baton.process.wait(20) == 0
    finally:
        baton.stop()
    assert "Application shutdown complete" in baton.log.read_text()


STUCK_GRAPH = """
import threading
from typing import TypedDict
from langgraph.graph import END, START, StateGraph
TIMEOUT = 0.5
class S(TypedDict, total=False):
    text: str
    reply: str
def wait(state):
    threading.Event().wait()  # a call that never answers, in a plain node
    return {"reply": "never"}
graph = StateGraph(S)
graph.add_node("wait", wait)
graph.add_edge(START, "wait")
graph.add_edge("wait", END)
"""


@pytest.mark.parametrize("password", ["my secret", "p@ss/w%rd:#?", "é €"])
def test_a_postgresql_url_reaches_the_checkpointer_as_written(password: str) -> None:
    """``postgresql://baton:my%20secret@db/baton``, rightly encoded, worked for Baton's own tables and stopped its
    start at the checkpointer: the URL was decoded and written out again with a bare space, which psycopg refuses
    ("unexpected spaces found")."""
    url = f"postgres://bat%20on:{quote(password, safe='')}@db.example:5433/baton?sslmode=require"
    assert conninfo_to_dict(postgres_conninfo(url)) == {
        "user": "bat on", "password": password, "host": "db.example", "port": "5433", "dbname": "baton",
        "sslmode": "require", "connect_timeout": "10"}  # Baton's default (storage.db.pg_connect_params)


def test_a_graph_module_that_exits_at_import_is_named(package) -> None:
    """``sys.exit("set DEPLOY_TOKEN first")`` at a module's top: ``baton run`` and ``baton graphs`` ended with that
    line alone, naming neither the module nor that it was a graph module's doing."""
    name = package({"deploy": "import os, sys\nif 'DEPLOY_TOKEN' not in os.environ:\n    sys.exit('set DEPLOY_TOKEN first')\n"})
    with pytest.raises(GraphError, match=re.escape("deploy.py, line 3): SystemExit: set DEPLOY_TOKEN first")):
        GraphRegistry.discover(name)


def test_a_make_input_that_cannot_take_a_request_is_named_at_start(package) -> None:
    """``def make_input(text)``: Baton started, and every request was answered "`deploy` could not read this
    request: make_input() takes 1 positional argument but 2 were given. Nothing was run." (the author's mistake
    told to each requester as theirs)."""
    name = package({"deploy": GOOD_GRAPH + "def make_input(text):\n    return {'text': text}\n"})
    with pytest.raises(GraphError, match=re.escape("make_input must take two arguments, (request, text): make_input(text)")):
        GraphRegistry.discover(name)
    fine = package({"deploy": GOOD_GRAPH + "def make_input(request, text, *, strict=False):\n    return {'text': text}\n"})
    assert GraphRegistry.discover(fine).names() == ["deploy"]


async def test_a_plain_conditional_edge_runs_in_a_graph_thread(tmp_path, config_path) -> None:
    """A plain function routing a conditional edge ran in the event loop's default executor, which Baton's own work
    needs: one that waits on a call that never answers held a thread of it for good (see the plain nodes above)."""
    threads: list[str] = []

    def route(_state: State) -> str:
        threads.append(threading.current_thread().name)
        return "act"

    async def act(_state: State) -> State:
        return {"reply": "routed"}

    graph = StateGraph(State)
    graph.add_node("act", act)
    graph.add_conditional_edges(START, route, ["act"])
    graph.add_edge("act", END)
    async with _asked(tmp_path, config_path, GraphSpec(name="route", graph=graph), "route") as baton:
        assert await _reply(baton, "1") == "routed"
    assert len(threads) == 1 and threads[0].startswith("baton-graph-"), threads


async def test_the_graph_task_factory_passes_on_what_create_task_gives_it() -> None:
    """From Python 3.13, ``create_task(coro, name=...)`` hands ``name`` to the loop's task factory, which took
    only ``context``: every task, Baton's drains and LangGraph's own, would have failed with a TypeError."""
    from bot.runtime import _contain_exits_of_graph_tasks

    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    try:
        _contain_exits_of_graph_tasks(loop)
        factory = loop.get_task_factory()
        assert factory is not None

        async def work() -> int:
            return 1

        task = factory(loop, work(), name="drain-1")  # type: ignore[call-arg]
        assert await task == 1 and task.get_name() == "drain-1"
    finally:
        loop.set_task_factory(previous)
