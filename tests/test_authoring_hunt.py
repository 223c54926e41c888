"""A new graph author following "Writing a graph" to the letter: what went wrong for them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import pytest
from langchain_core.messages import AIMessage
from langgraph.types import interrupt
from pydantic import BaseModel
from sqlmodel import select

from bot.app import Baton
from bot.kit import approve, progress
from bot.messages import InboundMessage
from bot.registry import GraphError, GraphRegistry, GraphSpec, _spec_from_module
from bot.settings import Settings
from storage.models import Approval, PlaygroundMessage
from tests.test_graph_authoring_hunt import _module
from tests.test_graph_modules import GOOD_GRAPH, State, _one_node, package  # noqa: F401


@pytest.mark.parametrize(("module", "expected"), [
    # `@baton cancel deploy-42` was answered "`cancel` stops a run that is going on: write it in that run's thread",
    # while help listed the graph with its example, `cancel deploy-42`
    ("cancel", "`cancel` is a command of Baton's own .* name the module otherwise"),
    # the names of Baton's own runs: a graph's runs under them were left out of digests and baton_runs_started_total
    # (taken for a model's routing of chatter), or shown in status as "waiting for a choice"
    ("route", "`route` is the name of Baton's own runs .* name the module otherwise"),
    ("choose", "`choose` is the name of Baton's own runs .* name the module otherwise"),
])
def test_a_graph_named_as_batons_own_command_or_runs_is_refused(package, module, expected) -> None:
    name = package({module: GOOD_GRAPH})
    with pytest.raises(GraphError, match=expected):
        GraphRegistry.discover(name)


@asynccontextmanager
async def _asked_on(database_url: str, config_path: Path, spec: GraphSpec, text: str,
                    thread: str = "1") -> AsyncIterator[Baton]:
    """``tests.test_graph_modules._asked`` on ``database_url`` (SQLite or PostgreSQL)."""
    settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        baton.registry.add(spec)
        await baton.accept_message(InboundMessage(
            platform="playground", channel="general", thread=thread, event_id=f"e{thread}", user="alice", text=text))
        yield baton


async def _bot_texts(baton: Baton, thread: str, count: int, timeout: float = 10) -> list[str]:
    """The bot's messages in ``thread``, in order, once there are ``count`` of them."""
    async def texts() -> list[str]:
        while True:
            async with baton.db.read() as session:
                found = (await session.exec(select(PlaygroundMessage).where(
                    PlaygroundMessage.thread_id == thread, PlaygroundMessage.is_bot)
                    .order_by(PlaygroundMessage.id))).all()  # type: ignore[arg-type]
            if len(found) >= count:
                return [message.text for message in found]
            await baton.outbox.wait("never-woken", 0.05)

    return await asyncio.wait_for(texts(), timeout)


async def test_a_progress_line_no_database_stores_holds_up_nothing(database_url, config_path) -> None:
    """``progress(path)`` of a file name read with ``os.listdir`` (a Latin-1 name: a lone surrogate), or of a
    command's output holding a NUL (PostgreSQL's text takes none): the progress message could never be stored
    by the playground (UnicodeEncodeError, DataError), was tried again for ever, and the run's reply, behind
    it in the thread, never came."""
    def act(_state: State) -> State:
        progress(b"caf\xe9.txt".decode("utf-8", "surrogateescape"))
        progress("read 3 bytes: a\x00b")
        return {"reply": "listed"}

    async with _asked_on(database_url, config_path, GraphSpec(name="lister", graph=_one_node(act)), "lister") as baton:
        shown = await _bot_texts(baton, "1", 2)
        assert shown == ["caf\ufffd.txt\nread 3 bytes: a\ufffdb", "listed"], shown


async def test_a_question_holding_a_nul_is_asked(database_url, config_path) -> None:
    """``interrupt(f"Apply?\\n{output}")`` or ``approve(..., details={"output": output})`` of a command's output
    holding a NUL: on PostgreSQL storing the approval failed (DataError), and the thread read "Something went
    wrong while handling this; it was logged." instead of a card."""
    def act(state: State) -> State:
        if state["text"] == "plain":
            return {"reply": str(interrupt("Apply a\x00b?")["approved"])}
        return {"reply": str(approve("Apply c\x00d?", details={"output": "e\x00f"}, risk="low").approved)}

    for thread, how in (("1", "plain"), ("2", "kit")):
        spec = GraphSpec(name=f"asker{thread}", graph=_one_node(act))
        async with _asked_on(database_url, config_path, spec, f"asker{thread} {how}", thread) as baton:
            [card] = await _bot_texts(baton, thread, 1)
            assert card.startswith("*Approval needed*\nApply a\ufffdb?" if how == "plain" else
                                   "*Approval needed*\nApply c\ufffdd?\n```\noutput: e\ufffdf\n```"), card


def test_a_graph_module_that_names_its_graph_otherwise_is_named(package) -> None:
    """``app = builder.compile()`` (LangGraph's tutorials' name) in a module with a DESCRIPTION and an EXAMPLE:
    the module was left out without a word, ``baton graphs`` and help did not list it, and ``@baton rollback web``
    was answered with help. A module with none of a graph's settings is still code the graphs share."""
    named = GOOD_GRAPH.replace("graph = StateGraph(S)", "builder = StateGraph(S)").replace("graph.add", "builder.add")
    shared = f"TIMEOUT = 10  # for its HTTP calls\ndef make_input(request, text):\n    return {{'text': text}}\n{named}"
    name = package({"shared": shared, "rollback": f"DESCRIPTION = 'Roll back.'\nEXAMPLE = 'rollback web'\n{named}"
                                                  "app = builder.compile()\n"})
    with pytest.raises(GraphError, match=r"graphs_under_test_\w+\.rollback .*rollback\.py\): it sets DESCRIPTION, "
                                         r"EXAMPLE but defines no `graph`.*`graph` \(`builder`, `app` are\)"):
        GraphRegistry.discover(name)


@pytest.mark.parametrize("content", ["Hi there", [{"type": "text", "text": "Hi there"}]])
async def test_a_reply_that_is_the_models_message_shows_its_text(sqlite_url, config_path, content) -> None:
    """``return {"reply": await chat([...])}`` (``bot.kit.chat`` returns the model's ``AIMessage``): the thread
    read "content='Hi there' additional_kwargs={} response_metadata={} tool_calls=[] invalid_tool_calls=[]"."""
    def act(_state: State) -> dict[str, Any]:
        return {"reply": AIMessage(content=content)}

    async with _asked_on(sqlite_url, config_path, GraphSpec(name="chatty", graph=_one_node(act)), "chatty") as baton:
        assert await _bot_texts(baton, "1", 1) == ["Hi there"]


@pytest.mark.parametrize(("file", "expected"), [
    # listed by help and `baton graphs` as `roll back`, and never run: `@baton roll back web` looked for `roll`
    ("roll back", r"graphs_under_test_\w+\.roll back .*`@baton roll back` looks for `roll`\): name the module "
                  r"roll_back\.py"),
    # left out without a word: Python imports no module with a dot in its name
    ("roll.back", r"graphs_under_test_\w+/roll\.back\.py is no module Python can import .* name it roll_back\.py"),
])
def test_a_graph_module_whose_name_chat_or_python_cannot_use_is_named(package, file, expected) -> None:
    name = package({file: GOOD_GRAPH})
    with pytest.raises(GraphError, match=expected):
        GraphRegistry.discover(name)


class Verdict(BaseModel):
    approved: bool
    by: str


@pytest.mark.parametrize(("schema", "refused"), [
    (Literal["approve", "reject"], 'takes one of ["approve", "reject"]; a card\'s answer is a dict (approved, by, at, '
                                   'approval_id), or a bool with response_schema=bool. Nobody was asked'),
    (str, "takes text; a card's answer is a dict"),
    (Verdict, None),  # a dict with approved and by: the decision fits it
])
async def test_an_interrupt_whose_answer_no_card_gives_is_asked_of_nobody(sqlite_url, config_path, schema,
                                                                           refused) -> None:
    """``interrupt("Deploy?", response_schema=Literal["approve", "reject"])``: the card was posted and approved,
    and the approver's click failed the run ("ValidationError: 1 validation error for literal['approve','reject']"),
    nothing done and the decision lost."""
    def act(_state: State) -> State:
        return {"reply": repr(interrupt("Deploy web?", response_schema=schema))}

    async with _asked_on(sqlite_url, config_path, GraphSpec(name="typed", graph=_one_node(act)), "typed") as baton:
        [shown] = await _bot_texts(baton, "1", 1)
        if refused is None:
            assert shown.startswith("*Approval needed*\nDeploy web?"), shown
            return
        assert f"`typed` failed:\n```\nQuestionUnanswerable: interrupt('Deploy web?', response_schema=...) {refused}" in shown
        async with baton.db.read() as session:
            assert (await session.exec(select(Approval))).all() == []


@pytest.mark.parametrize(("settings", "expected"), [
    # help listed "• `web` — Roll back.", and `@baton web` was answered "I don't know how to handle `web`"
    ("EXAMPLE = 'web'\n", r"EXAMPLE 'web' would not reach this graph \(`@baton web` looks for a graph `web`\): "
                          r"write the whole request help shows, such as `rollback web`"),
    ("EXAMPLE = ' '\n", "EXAMPLE is empty: write a whole request help can show, such as `rollback`"),
    ("EXAMPLE = '@baton rollback web'\n", "EXAMPLE '@baton rollback web' begins with a mention: write the request "
                                          "without it, `rollback web`"),
])
def test_an_example_that_does_not_reach_its_graph_is_named(package, settings, expected) -> None:
    name = package({"rollback": "DESCRIPTION = 'Roll back.'\n" + settings + GOOD_GRAPH})
    with pytest.raises(GraphError, match=expected):
        GraphRegistry.discover(name)


def test_an_example_that_reaches_its_graph_is_taken(package) -> None:
    """By its name (in any case, after which anything goes; after `force` too), or by one of its patterns."""
    name = package({"rollback": "EXAMPLE = 'Rollback web'\n" + GOOD_GRAPH,
                    "redo": "EXAMPLE = 'force redo web'\n" + GOOD_GRAPH,
                    "deploy": "EXAMPLE = 'ship web to prod'\nPATTERNS = [r'^ship ']\n" + GOOD_GRAPH})
    registry = GraphRegistry.discover(name)
    assert [spec.example for spec in registry] == ["ship web to prod", "force redo web", "Rollback web"]


SUBGRAPH_WITH_BREAKPOINT = """
from typing import TypedDict
from langgraph.graph import END, START, StateGraph
class S(TypedDict, total=False):
    text: str
    reply: str
inner = StateGraph(S)
inner.add_node("check", lambda s: {"reply": "checked"})
inner.add_edge(START, "check")
inner.add_edge("check", END)
graph = StateGraph(S)
graph.add_node("review", inner.compile(interrupt_before=["check"]))
graph.add_node("ship", lambda s: {"reply": s["reply"] + ", shipped"})
graph.add_edge(START, "review")
graph.add_edge("review", "ship")
graph.add_edge("ship", END)
"""


def test_a_subgraph_with_a_static_breakpoint_is_refused(package) -> None:
    """The top graph's ``interrupt_before`` was refused, a subgraph's was not: the run ended "Done." at its
    breakpoint, and neither the subgraph's node nor the parent's nodes after it ever ran."""
    name = package({"shipit": SUBGRAPH_WITH_BREAKPOINT})
    with pytest.raises(GraphError, match=r"shipit .*its subgraph `review` is compiled with interrupt_before/"
                                         r"interrupt_after, which Baton cannot resume"):
        GraphRegistry.discover(name)


def test_two_modules_chat_reads_as_one_graph_are_named(package) -> None:
    """``Deploy.py`` beside ``deploy.py`` (a copy renamed on a case-sensitive disk): Baton refused ``Deploy.py``
    saying "name the module deploy.py", the name the other module has."""
    name = package({"deploy": GOOD_GRAPH, "Deploy": GOOD_GRAPH})
    with pytest.raises(GraphError, match=r"/Deploy\.py and graphs_under_test_\w+/deploy\.py are one graph to chat "
                                         r"\(`@baton deploy`\): remove or rename one of them"):
        GraphRegistry.discover(name)


def test_an_async_make_input_is_refused_at_start(package) -> None:
    """``async def make_input(request, text)``: its coroutine was taken for the graph's input, and each request
    failed its run with "InvalidUpdateError: Expected dict, got <coroutine object make_input at 0x7f...>"."""
    name = package({"lookup": GOOD_GRAPH + "async def make_input(request, text):\n    return {'text': text}\n"})
    with pytest.raises(GraphError, match=r"lookup .*make_input must be a plain function \(def, not async def\)"):
        GraphRegistry.discover(name)


async def test_a_make_input_handing_on_a_coroutine_runs_nothing(sqlite_url, config_path) -> None:
    """A plain ``make_input`` returning an async function's coroutine (``lambda request, text: lookup(text)``)."""
    async def lookup(text: str) -> dict[str, Any]:
        return {"text": text}

    def act(state: State) -> State:
        return {"reply": f"ran with {state['text']}"}

    spec = _spec_from_module("lookup", _module(graph=_one_node(act), make_input=lambda _request, text: lookup(text)))
    async with _asked_on(sqlite_url, config_path, spec, "lookup web") as baton:
        [shown] = await _bot_texts(baton, "1", 1)
        assert "`lookup` could not read this request: its make_input returned coroutine, not the graph's input: " \
               "make_input is called, not awaited. Nothing was run." in shown, shown
