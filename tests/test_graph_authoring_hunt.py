"""Writing a graph of one's own as the README says, and running it in Baton: what went wrong for an author."""

from __future__ import annotations

import asyncio
import datetime
import re
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from langgraph.graph import StateGraph
from langgraph.types import RetryPolicy
from sqlmodel import select

from bot.app import Baton
from bot.kit import approve, effect
from bot.messages import InboundMessage
from bot.registry import GraphError, GraphRegistry, GraphSpec, _spec_from_module
from bot.settings import Settings
from storage.models import Approval
from tests.support import ROOT, BatonProcess
from tests.test_graph_modules import GOOD_GRAPH, State, _asked, _ledger, _one_node, _reply, package  # noqa: F401


async def test_effects_of_one_name_called_in_a_loop_each_run(tmp_path, config_path) -> None:
    """``for host in hosts: await effect("restart", ...)``: only the first host was restarted, and the
    others got its recorded result back ("restarted web; restarted web; restarted web")."""
    ran: list[str] = []

    async def act(state: State) -> State:
        done = []
        for host in state["text"].split():
            def restart(host: str = host) -> str:
                ran.append(host)
                return f"restarted {host}"
            done.append(await effect("restart", restart))
        return {"reply": "; ".join(done)}

    async with _asked(tmp_path, config_path, GraphSpec(name="multi", graph=_one_node(act)), "multi web api worker") as baton:
        assert await _reply(baton, "1") == "restarted web; restarted api; restarted worker"
        assert ran == ["web", "api", "worker"]
        assert [(name, status) for name, status, _ in await _ledger(baton)] == [("restart", "done")] * 3


async def test_a_retried_node_gets_its_effects_recorded_results_back(tmp_path, config_path) -> None:
    """A node retried by its RetryPolicy runs from its first line: its effects count from the first
    again, so each is the same effect as before and none runs twice."""
    ran: list[str] = []
    attempts: list[int] = []

    async def act(state: State) -> State:
        attempts.append(1)
        first = await effect("restart", lambda: ran.append("web") or "web")
        second = await effect("restart", lambda: ran.append("api") or "api")
        if len(attempts) == 1:
            raise ConnectionError("flaky")
        return {"reply": f"{first} {second}"}

    retry = RetryPolicy(max_attempts=2, initial_interval=0.01, jitter=False, retry_on=ConnectionError)
    async with _asked(tmp_path, config_path, GraphSpec(name="flaky", graph=_one_node(act, retry)), "flaky") as baton:
        assert await _reply(baton, "1") == "web api"
        assert ran == ["web", "api"] and len(attempts) == 2


def test_a_graph_named_force_is_refused(package) -> None:
    """``force`` as a request's first word is read as "run it anyway": a module ``force.py`` was listed by
    help and ``baton graphs``, and ``@baton force web`` answered "I don't know how to handle “web”"."""
    name = package({"force": GOOD_GRAPH})
    with pytest.raises(GraphError, match="`force` .* name the module otherwise"):
        GraphRegistry.discover(name)


def test_a_graph_module_named_a_command_in_capitals_is_told_to_be_named_otherwise(package) -> None:
    """``Cancel.py`` was told to "name the module cancel.py", which is then refused as a command of Baton's own."""
    name = package({"Cancel": GOOD_GRAPH})
    with pytest.raises(GraphError, match="`cancel` is a command of Baton's own .* name the module otherwise"):
        GraphRegistry.discover(name)


def _asking(**kwargs: Any) -> StateGraph:
    def ask(_state: State) -> State:
        decision = approve("Restart web?", **kwargs)
        return {"reply": f"approved: {decision.approved}"}
    return _one_node(ask)


async def _card(baton: Baton, thread: str, timeout: float = 20) -> Approval:
    async def approval() -> Approval:
        while True:
            async with baton.db.read() as session:
                found = (await session.exec(select(Approval))).first()
            if found is not None and found.card_outbox_id is not None:
                return found
            await baton.outbox.wait("never-woken", 0.05)

    return await asyncio.wait_for(approval(), timeout)


async def test_approve_shows_details_that_are_not_json_as_text(tmp_path, config_path) -> None:
    """``approve(..., details={"since": datetime})``: the approval could not be stored, and the requester
    read "Something went wrong while handling this; it was logged." (the card never came)."""
    since = datetime.datetime(2026, 12, 1, 9, 30)
    async with _asked(tmp_path, config_path, GraphSpec(name="restart", graph=_asking(details={"since": since})),
                      "restart") as baton:
        card = await _card(baton, "1")
        assert card.details == {"since": "2026-12-01 09:30:00"}
        assert "since: 2026-12-01 09:30:00" in await _reply(baton, "1")


async def test_approve_takes_one_approver_written_as_text(tmp_path, config_path) -> None:
    """``approve(..., approvers="carol")``: each letter was an approver ("approvers: c, a, r, o, l"), and
    carol was told "Only c, a, r, o or l can approve this." """
    async with _asked(tmp_path, config_path, GraphSpec(name="restart", graph=_asking(approvers="carol")),
                      "restart") as baton:
        assert (await _card(baton, "1")).approvers == ["carol"]


@pytest.mark.parametrize(("kwargs", "expected"), [
    # "medium" was stored and shown ("risk medium"), and treated as low: the requester could approve it
    ({"risk": "medium"}, "approve(): risk must be 'low' or 'high', not 'medium'"),
    ({"approvers": [1, None]}, "approve(): approvers must be user ids (text)"),
    ({"details": {"ratio": float("nan")}}, "approve(): details must be JSON"),
    # a list of pairs was read as a dict of them; anything else broke the handling ("Something went wrong")
    ({"details": ["web", "api"]}, "approve(): details must be a dict (a name for each value), not list"),
])
async def test_approve_called_wrongly_fails_the_run_with_the_reason(tmp_path, config_path, kwargs, expected) -> None:
    async with _asked(tmp_path, config_path, GraphSpec(name="restart", graph=_asking(**kwargs)), "restart") as baton:
        reply = await _reply(baton, "1")
        assert expected in reply, reply
        async with baton.db.read() as session:
            assert (await session.exec(select(Approval))).first() is None


@pytest.mark.parametrize(("line", "expected"), [
    # each was taken as true (or listed as "`None`"), silently
    ("DEDUPE = 'false'\n", "DEDUPE must be True or False, not str"),
    ("ASKS_APPROVAL = 'yes'\n", "ASKS_APPROVAL must be True or False, not str"),
    ("EXAMPLE = None\n", "EXAMPLE must be text, not NoneType"),
    ("DESCRIPTION = ['Deploy']\n", "DESCRIPTION must be text, not list"),
    ("make_input = {'text': ''}\n", "make_input must be a function (request, text) -> dict, not dict"),
])
def test_a_graph_setting_of_the_wrong_type_is_named(package, line, expected) -> None:
    name = package({"deploy": GOOD_GRAPH + line})
    with pytest.raises(GraphError, match=re.escape(expected)):
        GraphRegistry.discover(name)


async def test_a_request_make_input_refuses_is_answered_with_its_reason(tmp_path, config_path) -> None:
    """``make_input`` raising ``ValueError("...")`` for arguments it cannot read: the requester read
    "Something went wrong while handling this; it was logged." and never learnt what to write."""
    def make_input(_request: Any, text: str) -> dict[str, Any]:
        if not text.isdigit():
            raise ValueError("give the number of replicas, e.g. `scale 3`")
        return {"text": text}

    async def act(state: State) -> State:
        return {"reply": f"scaled to {state['text']}"}

    spec = _spec_from_module("scale", _module(graph=_one_node(act), make_input=make_input))
    async with _asked(tmp_path, config_path, spec, "scale lots") as baton:
        reply = await _reply(baton, "1")
    assert "`scale` could not read this request: give the number of replicas, e.g. `scale 3`" in reply, reply
    assert "Nothing was run" in reply


def _module(**attributes: Any) -> ModuleType:
    module = ModuleType("graphs_authored_inline")
    module.__file__ = "graphs_authored_inline.py"
    module.__dict__.update(attributes)
    return module


EXITING_GRAPH = """
import sys
from typing import TypedDict
from langgraph.graph import END, START, StateGraph
from bot.kit import progress
class S(TypedDict, total=False):
    text: str
    reply: str
def parse(state):
    if state["text"] == "interrupt":
        raise KeyboardInterrupt
    sys.exit("usage: exiter <service>")      # what argparse does with arguments it cannot read
async def leave(state):
    sys.exit(3)
graph = StateGraph(S)
graph.add_node("parse", parse)
graph.add_node("leave", leave)
graph.add_conditional_edges(START, lambda s: "leave" if s["text"] == "async" else "parse", ["parse", "leave"])
graph.add_edge("parse", END)
graph.add_edge("leave", END)
"""


@pytest.fixture
def own_graphs(tmp_path: Path) -> Path:
    """A working directory whose ``graphs/`` (Baton's own and the author's) ``python -m bot.cli run`` finds first."""
    shutil.copytree(ROOT / "graphs", tmp_path / "graphs", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "graphs" / "exiter.py").write_text(EXITING_GRAPH)
    return tmp_path


def test_a_node_that_calls_sys_exit_fails_its_run_not_baton(own_graphs, config_path, sqlite_url) -> None:
    """``sys.exit("usage: ...")`` in a node (argparse does it) stopped the whole ``baton run``; started again, it
    ran the request again and stopped again, for good."""
    baton = BatonProcess(sqlite_url, config_path, own_graphs).start()  # the fork server finds own_graphs/graphs too
    try:
        chat = baton.client()
        for text, reason in (("web", "usage: exiter <service>"), ("async", "3"), ("interrupt", "KeyboardInterrupt")):
            thread = chat.ask(f"@baton exiter {text}")
            reply = chat.wait_reply(thread, "`exiter` failed")
            assert reason in reply["text"], reply["text"]
        assert baton.process is not None and baton.process.poll() is None
        assert "help" in chat.wait_reply(chat.ask("@baton help"), "exiter")["text"]
    finally:
        baton.stop()


async def test_effect_called_from_a_plain_node_says_it_needs_an_async_one(tmp_path, config_path) -> None:
    """``def act(state): effect("rollback", ...)`` in a plain (sync) node, where ``await`` cannot be written: the
    rollback never ran, and the reply said "Rolled back: <coroutine object effect at 0x...>"."""
    ran: list[int] = []

    def act(_state: State) -> State:
        result = effect("rollback", lambda: ran.append(1) or "done")
        return {"reply": f"Rolled back: {result}"}

    async with _asked(tmp_path, config_path, GraphSpec(name="rollback", graph=_one_node(act)), "rollback") as baton:
        reply = await _reply(baton, "1")
    assert "effect() runs in an async node" in reply, reply
    assert ran == []


async def test_an_announcement_longer_than_its_card_is_not_put_to_approval(tmp_path, config_path) -> None:
    """The card showed the first 3,000 characters of a 3,200-character announcement; approved, the whole of
    it was posted, its end never seen by the approver."""
    text = "Maintenance tonight. " * 150 + "Also: the prod database is deleted at 23:00."
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'e.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        await baton.accept_message(InboundMessage(
            platform="playground", channel="general", thread="1", event_id="e1", user="alice", text=f"announce {text}"))
        reply = await _reply(baton, "1")
        async with baton.db.read() as session:
            assert (await session.exec(select(Approval))).first() is None
    assert "too long for an approval card" in reply, reply


async def test_approve_with_a_question_longer_than_its_card_fails_the_run(tmp_path, config_path) -> None:
    def ask(_state: State) -> State:
        return {"reply": str(approve("Run this?\n" + "x" * 3100).approved)}

    async with _asked(tmp_path, config_path, GraphSpec(name="long", graph=_one_node(ask)), "long") as baton:
        reply = await _reply(baton, "1")
        async with baton.db.read() as session:
            assert (await session.exec(select(Approval))).first() is None
    assert "approve(): the question is 3,110 characters; an approval card shows 3,000" in reply, reply


@pytest.mark.parametrize(("line", "expected"), [
    # a bytes pattern broke routing for every request no graph name matched: "Something went wrong" for all chat
    ("PATTERNS = [b'deploy']\n", "PATTERNS: b'deploy' is not a regular expression: write it as text"),
    ("PATTERNS = None\n", "PATTERNS must be a list of regular expressions, not NoneType"),
    # matched every text: each unknown request ran this graph instead of help, and so did "thanks!" in any
    # Baton thread
    ("PATTERNS = ['deploy|']\n", "PATTERNS: 'deploy|' matches any text (even an empty one)"),
    ("PATTERNS = ['(deploy)?']\n", "PATTERNS: '(deploy)?' matches any text (even an empty one)"),
])
def test_a_pattern_that_is_not_text_is_named(package, line, expected) -> None:
    name = package({"deploy": GOOD_GRAPH + line})
    with pytest.raises(GraphError, match=re.escape(expected)):
        GraphRegistry.discover(name)


def test_a_compiled_pattern_is_taken_with_its_flags(package) -> None:
    """``PATTERNS = [re.compile(...)]`` stopped start-up with a traceback ("cannot process flags argument with a
    compiled pattern") naming neither the module nor the pattern."""
    name = package({"deploy": GOOD_GRAPH + "import re\nPATTERNS = [re.compile(r'^ship (\\w+) now$', re.MULTILINE)]\n"})
    (pattern,) = GraphRegistry.discover(name).get("deploy").patterns  # type: ignore[union-attr]
    assert pattern.search("please\nShip web NOW") and pattern.flags & re.MULTILINE
