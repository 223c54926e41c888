"""Graphs written as LangGraph's and LangChain's current docs show them, run end to end through Baton.

Fixed here (each failed before): a ``context_schema`` got no context (``runtime.context`` was ``None``), the
long-term store was ``None`` (``get_store().put`` failed on "'NoneType' object has no attribute 'put'"),
``create_agent(..., response_format=Schema)`` replied "Done.", text a node wrote with LangGraph's own stream
writer was dropped, a ``cache_policy`` no cache served was ignored, ``interrupt({"question": ...})`` was a card
of JSON, and an ``@entrypoint`` taking text was given a dict. The rest pins what already worked: two cards at
once (parallel branches, ``Send``, decided in either order), a question in a subgraph, the functional API's, a
tool's own ``interrupt()``, ``Command(goto=...)`` and a node's ``timeout=``.
"""

from __future__ import annotations

import asyncio
import json
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal, TypedDict

import pytest
from langchain.agents import create_agent
from langchain.tools import ToolRuntime, tool
from langgraph.cache.memory import InMemoryCache
from langgraph.config import get_store, get_stream_writer
from langgraph.func import entrypoint, task
from langgraph.graph import START, StateGraph
from langgraph.runtime import Runtime
from langgraph.store.memory import InMemoryStore
from langgraph.types import CachePolicy, Command, Send, interrupt
from pydantic import BaseModel

from bot import graph_context
from bot.app import Baton
from bot.kit import Request
from bot.messages import InboundClick, InboundMessage
from bot.registry import GraphError, GraphSpec, _spec_from_module
from bot.settings import Settings
from tests.fake_models import ScriptedModel, calls
from tests.test_graph_authoring_hunt2 import _bot_texts, _runs, _waiting_card
from tests.test_graph_modules import _asked


class State(TypedDict, total=False):
    text: str
    reply: str
    done: Annotated[list[str], operator.add]


@dataclass
class Asker:
    user: str
    channel: str
    team: str = "ops"  # none of the request's: its default


def _graph(*nodes: Any, context_schema: type | None = None) -> StateGraph:
    """One node after another, from START."""
    graph = StateGraph(State, context_schema=context_schema)
    previous = START
    for node in nodes:
        graph.add_node(node.__name__, node)
        graph.add_edge(previous, node.__name__)
        previous = node.__name__
    return graph


def _model(tmp_path: Path, replies: list[dict[str, Any]]) -> ScriptedModel:
    script = tmp_path / "model.json"
    script.write_text(json.dumps(replies))
    return ScriptedModel(messages=iter(()), script_path=str(script))


async def _click(baton: Any, count: int, action: str) -> None:
    card = await _waiting_card(baton, count)
    await baton.accept_click(InboundClick(platform="playground", channel="general", thread="1", event_id=f"c{count}",
                                          user="bob", approval_id=card.id, action=action))


# -- the run's context ---------------------------------------------------------------------------------------------

async def test_a_graphs_context_schema_gets_the_request_before_and_after_its_card(tmp_path, config_path) -> None:
    """``runtime.context`` was ``None``: ``runtime.context.user`` failed the run. LangGraph keeps no context in its
    checkpoints, so the resume after the card gets it again."""
    def ask(_state: State, runtime: Runtime[Asker]) -> State:
        return {"done": [f"asked by {runtime.context.user} in #{runtime.context.channel} ({runtime.context.team})"]}

    def confirm(state: State, runtime: Runtime[Asker]) -> State:
        said = "yes" if interrupt("Go on?") else "no"
        return {"reply": f"{state['done'][0]}; {said}, still for {runtime.context.user}"}

    graph = _graph(ask, confirm, context_schema=Asker)
    async with _asked(tmp_path, config_path, GraphSpec(name="ctx", graph=graph), "ctx web") as baton:
        await _click(baton, 1, "approve")
        texts = await _bot_texts(baton, "1", 2)
        assert texts[-1] == "asked by alice in #general (ops); yes, still for alice", texts
        assert await _runs(baton) == [("ctx", "done", None)]


async def test_a_langchain_tool_reads_the_agents_context(tmp_path, config_path) -> None:
    """``create_agent(..., context_schema=...)`` and a tool's ``ToolRuntime.context``, as LangChain's docs show."""
    @tool
    def whoami(runtime: ToolRuntime[Asker]) -> str:
        """Who is asking."""
        return f"{runtime.context.user} in #{runtime.context.channel}"

    model = _model(tmp_path, [{"content": "", "tool_calls": [{"name": "whoami", "args": {}, "id": "call-1"}]},
                              {"content": "You are alice."}])
    agent = create_agent(model, tools=[whoami], context_schema=Asker)
    async with _asked(tmp_path, config_path, GraphSpec(name="agent", graph=agent), "agent who am i") as baton:
        assert (await _bot_texts(baton, "1", 1))[-1] == "You are alice."
    assert calls(tmp_path / "model.json")[-1]["said"][-1] == "tool: alice in #general"


class NeedsTenant(BaseModel):
    tenant_id: str
    user: str = ""


async def test_a_context_field_baton_cannot_give_fails_the_run_saying_what_to_do(tmp_path, config_path) -> None:
    """A required field Baton has no value for: LangGraph's own "missing 1 required positional argument"."""
    def act(_state: State, runtime: Runtime[NeedsTenant]) -> State:
        return {"reply": runtime.context.tenant_id}

    graph = _graph(act, context_schema=NeedsTenant)
    async with _asked(tmp_path, config_path, GraphSpec(name="tenant", graph=graph), "tenant") as baton:
        reply = (await _bot_texts(baton, "1", 1))[-1]
        assert "its context_schema NeedsTenant requires `tenant_id`, which Baton cannot give" in reply, reply
        assert "give `tenant_id` a default or one of those names" in reply, reply


def _module(graph: Any) -> ModuleType:
    module = ModuleType("graphs_ecosystem")
    module.__file__ = "graphs_ecosystem.py"
    module.graph = graph  # type: ignore[attr-defined]
    return module


def test_a_context_field_baton_cannot_give_is_refused_at_start() -> None:
    def act(_state: State) -> State:
        return {}

    for graph in (_graph(act, context_schema=NeedsTenant), _graph(act, context_schema=NeedsTenant).compile()):
        with pytest.raises(GraphError, match=re.escape("graphs_ecosystem.py): its context_schema NeedsTenant requires "
                                                       "`tenant_id`, which Baton cannot give")):
            _spec_from_module("tenant", _module(graph))
    assert _spec_from_module("asker", _module(_graph(act, context_schema=Asker))).name == "asker"


def test_the_context_holds_only_the_fields_the_schema_names() -> None:
    request = Request(platform="slack", channel="C1", thread="T1", user="U1", text="deploy web", private=True)

    class Typed(TypedDict, total=False):
        user: str
        private: bool

    assert graph_context.context_for(StateGraph(State, context_schema=Typed), request) == {"user": "U1",
                                                                                          "private": True}
    assert graph_context.context_for(StateGraph(State), request) is None
    assert graph_context.refusal(StateGraph(State, context_schema=Asker)) is None


# -- the long-term store -------------------------------------------------------------------------------------------

async def test_a_graph_using_the_store_is_told_baton_gives_none(tmp_path, config_path) -> None:
    def remember(state: State) -> State:
        get_store().put(("notes",), "last", {"text": state["text"]})
        return {"reply": "noted"}

    async with _asked(tmp_path, config_path, GraphSpec(name="note", graph=_graph(remember)), "note web") as baton:
        reply = (await _bot_texts(baton, "1", 1))[-1]
        assert "NoStoreError: Baton gives graphs no long-term store (get_store(), runtime.store)" in reply, reply
        assert "graph = builder.compile(store=...)" in reply, reply


async def test_a_graph_that_checks_for_a_store_finds_none_and_one_with_its_own_keeps_it(tmp_path, config_path) -> None:
    """LangGraph's ``if runtime.store:`` skips what no store is; a graph compiled with a store uses it."""
    def greet(state: State, runtime: Runtime) -> State:
        if not runtime.store:
            return {"reply": "no memory"}
        runtime.store.put(("seen",), "who", {"name": state["text"]})
        return {"reply": f"remembered {runtime.store.get(('seen',), 'who').value['name']}"}

    async with _asked(tmp_path, config_path, GraphSpec(name="greet", graph=_graph(greet)), "greet ann") as baton:
        assert (await _bot_texts(baton, "1", 1))[-1] == "no memory"
    own = _graph(greet).compile(store=InMemoryStore())
    (tmp_path / "own").mkdir()
    async with _asked(tmp_path / "own", config_path, GraphSpec(name="greet", graph=own), "greet ann") as baton:
        assert (await _bot_texts(baton, "1", 1))[-1] == "remembered ann"


# -- a node's cache ----------------------------------------------------------------------------------------------

def _cached(ran: list[str]) -> StateGraph:
    def look(state: State) -> State:
        ran.append(state["text"])
        return {"reply": f"looked {len(ran)} time(s)"}

    graph = StateGraph(State)
    graph.add_node("look", look, cache_policy=CachePolicy(ttl=600))
    graph.add_edge(START, "look")
    return graph


@pytest.mark.parametrize("compiled", [False, True])
def test_a_cache_policy_no_cache_serves_is_refused_at_start(compiled) -> None:
    """A builder Baton compiles (with no cache), or one compiled without one: LangGraph skips the cache_policy,
    and the node ran every time without a word."""
    graph = _cached([]).compile() if compiled else _cached([])
    with pytest.raises(GraphError, match=re.escape("its node `look` has a cache_policy, but the graph has no cache "
                                                   "to keep its results in: compile it with one (`graph = builder."
                                                   "compile(cache=InMemoryCache())`")):
        _spec_from_module("look", _module(graph))
    outer = StateGraph(State)
    outer.add_node("inner", graph.compile() if not compiled else graph)
    outer.add_edge(START, "inner")
    with pytest.raises(GraphError, match=re.escape("its node `inner/look` has a cache_policy")):
        _spec_from_module("look", _module(outer))


async def test_a_graph_compiled_with_a_cache_keeps_node_results_between_runs(tmp_path, config_path) -> None:
    ran: list[str] = []
    module = _module(_cached(ran).compile(cache=InMemoryCache()))
    module.DEDUPE = False  # type: ignore[attr-defined]  # asked again in another thread: run, not linked
    spec = _spec_from_module("look", module)
    async with _asked(tmp_path, config_path, spec, "look web") as baton:
        assert (await _bot_texts(baton, "1", 1))[-1] == "looked 1 time(s)"
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="2", event_id="e2",
                                                  user="carol", text="look web"))
        assert (await _bot_texts(baton, "2", 1))[-1] == "looked 1 time(s)"
    assert ran == ["web"]


# -- what a node streams, and an agent's structured answer ---------------------------------------------------------

async def test_text_a_node_writes_to_langgraphs_stream_is_shown_as_progress(tmp_path, config_path) -> None:
    """``get_stream_writer()("...")`` and ``runtime.stream_writer(...)``: nothing reached the thread. A dict of
    the graph's own is still not shown."""
    def look(state: State, runtime: Runtime) -> State:
        get_stream_writer()(f"Looking up {state['text']}")
        get_stream_writer()({"percent": 50})
        runtime.stream_writer("Almost there")
        return {"reply": "found"}

    async with _asked(tmp_path, config_path, GraphSpec(name="look", graph=_graph(look)), "look web") as baton:
        texts = await _bot_texts(baton, "1", 2)
        assert texts == ["Looking up web\nAlmost there", "found"], texts


class Weather(BaseModel):
    city: str
    degrees: int


async def test_an_agents_structured_response_is_its_reply(tmp_path, config_path) -> None:
    """``create_agent(..., response_format=Weather)``: its last message is a tool call with no text, and the
    reply was "Done."."""
    model = _model(tmp_path, [{"content": "", "tool_calls": [
        {"name": "Weather", "args": {"city": "Paris", "degrees": 12}, "id": "call-1"}]}])
    agent = create_agent(model, tools=[], response_format=Weather)
    async with _asked(tmp_path, config_path, GraphSpec(name="weather", graph=agent), "weather paris") as baton:
        reply = (await _bot_texts(baton, "1", 1))[-1]
        assert json.loads(reply.strip("`\n")) == {"city": "Paris", "degrees": 12}, reply


# -- questions asked as LangGraph's docs ask them -------------------------------------------------------------------

@pytest.mark.parametrize("action", ["approve", "reject"])
async def test_the_docs_question_dict_is_the_cards_question_with_its_details_below(tmp_path, config_path,
                                                                                 action) -> None:
    """``interrupt({"question": ..., "details": ...})`` and ``Command(goto=...)`` on the answer, as LangGraph's
    "approve or reject" pattern: the card showed the whole dict as one block of JSON."""
    def approval(_state: State) -> Command[Literal["proceed", "cancel"]]:
        is_approved = interrupt({"question": "Do you want to proceed with this action?",
                                 "details": {"amount": 500, "to": "acme"}, "note": "from the nightly batch"})
        return Command(goto="proceed" if is_approved else "cancel")

    def proceed(_state: State) -> State:
        return {"reply": "proceeded"}

    def cancel(_state: State) -> State:
        return {"reply": "cancelled"}

    graph = StateGraph(State)
    for node in (approval, proceed, cancel):
        graph.add_node(node.__name__, node)
    graph.add_edge(START, "approval")
    async with _asked(tmp_path, config_path, GraphSpec(name="pay", graph=graph), "pay") as baton:
        card = await _waiting_card(baton, 1)
        assert card.summary == "Do you want to proceed with this action?", card.summary
        assert card.details == {"details": '{"amount": 500, "to": "acme"}', "note": "from the nightly batch"}
        await _click(baton, 1, action)
        assert (await _bot_texts(baton, "1", 2))[-1] == ("proceeded" if action == "approve" else "cancelled")


# -- questions LangGraph asks in other ways (these worked: pinned) -------------------------------------------------

@pytest.mark.parametrize("first", ["approve", "reject"])
async def test_two_branches_asking_at_once_are_two_cards_decided_in_either_order(tmp_path, config_path, first) -> None:
    def deploy(_state: State) -> State:
        return {"done": [f"deploy={bool(interrupt('Deploy web?'))}"]}

    def migrate(_state: State) -> State:
        return {"done": [f"migrate={bool(interrupt('Migrate the database?'))}"]}

    def report(state: State) -> State:
        return {"reply": ", ".join(sorted(state["done"]))}

    graph = StateGraph(State)
    for node in (deploy, migrate, report):
        graph.add_node(node.__name__, node)
    graph.add_edge(START, "deploy")
    graph.add_edge(START, "migrate")
    graph.add_edge(["deploy", "migrate"], "report")
    second = "reject" if first == "approve" else "approve"
    async with _asked(tmp_path, config_path, GraphSpec(name="both", graph=graph), "both") as baton:
        cards = [await _waiting_card(baton, 1), await _waiting_card(baton, 2)]
        assert sorted(card.summary for card in cards) == ["Deploy web?", "Migrate the database?"]
        await _click(baton, 1, first)
        await _click(baton, 2, second)
        texts = await _bot_texts(baton, "1", 3)
        verdict = {"approve": "True", "reject": "False"}
        decided = {card.summary.split()[0].lower(): verdict[action] for card, action in zip(cards, (first, second))}
        assert texts[-1] == f"deploy={decided['deploy']}, migrate={decided['migrate']}", texts
        assert await _runs(baton) == [("both", "done", None)]


async def test_send_fan_out_asks_once_a_branch(tmp_path, config_path) -> None:
    def fan(state: State) -> list[Send]:
        return [Send("touch", {"text": host}) for host in state["text"].split()]

    def touch(state: State) -> State:
        host = state["text"]
        return {"done": [f"{host}={bool(interrupt(f'Touch {host}?'))}"]}

    def report(state: State) -> State:
        return {"reply": ", ".join(sorted(state["done"]))}

    graph = StateGraph(State)
    graph.add_node("touch", touch)
    graph.add_node("report", report)
    graph.add_conditional_edges(START, fan, ["touch"])
    graph.add_edge("touch", "report")
    async with _asked(tmp_path, config_path, GraphSpec(name="touch", graph=graph), "touch web api") as baton:
        cards = [await _waiting_card(baton, 1), await _waiting_card(baton, 2)]
        assert [card.summary for card in cards] == ["Touch web?", "Touch api?"]
        await _click(baton, 2, "approve")
        await _click(baton, 1, "reject")
        assert (await _bot_texts(baton, "1", 3))[-1] == "api=True, web=False"


async def test_a_question_in_a_subgraph_is_a_card(tmp_path, config_path) -> None:
    def ask(_state: State) -> State:
        return {"reply": "restarted" if interrupt("Restart web?") else "left alone"}

    inner = _graph(ask).compile()
    outer = StateGraph(State)
    outer.add_node("review", inner)
    outer.add_edge(START, "review")
    async with _asked(tmp_path, config_path, GraphSpec(name="outer", graph=outer), "outer") as baton:
        assert (await _waiting_card(baton, 1)).summary == "Restart web?"
        await _click(baton, 1, "reject")
        assert (await _bot_texts(baton, "1", 2))[-1] == "left alone"


async def test_an_entrypoint_that_takes_text_is_given_the_request_as_text(tmp_path, config_path) -> None:
    """The functional API's docs take text (``def workflow(topic: str)``, ``workflow.invoke("cat")``): it was given
    ``{"text": "cat"}``, and wrote "An essay about {'text': 'cat'}"."""
    @task
    def write_essay(topic: str) -> str:
        return f"An essay about {topic}"

    @entrypoint()
    def workflow(topic: str) -> dict[str, Any]:
        essay = write_essay(topic).result()
        return {"reply": essay if interrupt({"question": "Publish it?", "essay": essay}) else "Not published."}

    async with _asked(tmp_path, config_path, GraphSpec(name="essay", graph=workflow), "essay cats") as baton:
        card = await _waiting_card(baton, 1)
        assert card.details == {"essay": "An essay about cats"}, card.details
        await _click(baton, 1, "approve")
        assert (await _bot_texts(baton, "1", 2))[-1] == "An essay about cats"


async def test_the_functional_apis_questions_in_tasks_are_cards_one_after_another(tmp_path, config_path) -> None:
    """Two tasks that ask, started together: LangGraph asks the second once the first is answered."""
    @task
    def touch(host: str) -> str:
        return f"{host}={bool(interrupt(f'Touch {host}?'))}"

    @entrypoint()
    def flow(inputs: dict[str, Any]) -> str:
        return ", ".join(future.result() for future in [touch(host) for host in inputs["text"].split()])

    async with _asked(tmp_path, config_path, GraphSpec(name="flow", graph=flow), "flow web api") as baton:
        await _click(baton, 1, "approve")
        await _click(baton, 2, "reject")
        texts = await _bot_texts(baton, "1", 3)
        assert texts[-1] == "web=True, api=False", texts


async def test_a_tool_asking_itself_in_an_agent_is_a_card(tmp_path, config_path) -> None:
    ran: list[str] = []

    @tool
    def restart(service: str) -> str:
        """Restart a service."""
        answer = interrupt(f"Restart {service}?")
        if not answer:
            return f"not restarted: {answer['by']} rejected it"
        ran.append(service)
        return f"{service} restarted"

    model = _model(tmp_path, [{"content": "", "tool_calls": [{"name": "restart", "args": {"service": "web"},
                                                              "id": "call-1"}]}, {"content": "All done."}])
    agent = create_agent(model, tools=[restart])
    async with _asked(tmp_path, config_path, GraphSpec(name="agent", graph=agent), "agent restart web") as baton:
        assert (await _waiting_card(baton, 1)).summary == "Restart web?"
        await _click(baton, 1, "reject")
        assert (await _bot_texts(baton, "1", 2))[-1] == "All done."
    assert ran == [] and calls(tmp_path / "model.json")[-1]["said"][-1] == "tool: not restarted: bob rejected it"


async def test_command_goto_routes_and_updates(tmp_path, config_path) -> None:
    def route(state: State) -> Command[Literal["web", "api"]]:
        return Command(update={"done": ["routed"]}, goto="api" if "api" in state["text"] else "web")

    def web(state: State) -> State:
        return {"reply": f"web after {state['done']}"}

    def api(state: State) -> State:
        return {"reply": f"api after {state['done']}"}

    graph = StateGraph(State)
    for node in (route, web, api):
        graph.add_node(node.__name__, node)
    graph.add_edge(START, "route")
    async with _asked(tmp_path, config_path, GraphSpec(name="route_to", graph=graph), "route_to api") as baton:
        assert (await _bot_texts(baton, "1", 1))[-1] == "api after ['routed']"


async def test_a_node_timeout_fails_its_run_and_a_plain_node_with_one_is_refused(tmp_path, config_path) -> None:
    """LangGraph's own node ``timeout=`` (async nodes only: it refuses a plain one when the graph compiles)."""
    async def slow(_state: State) -> State:
        await asyncio.sleep(30)
        return {"reply": "late"}

    def plain(_state: State) -> State:
        return {}

    refused = StateGraph(State)
    refused.add_node("plain", plain, timeout=5)
    refused.add_edge(START, "plain")
    with pytest.raises(GraphError, match=re.escape("`graph` does not compile: Node timeouts are only supported for "
                                                   "async nodes")):
        _spec_from_module("plain", _module(refused))
    graph = StateGraph(State)
    graph.add_node("slow", slow, timeout=0.2)
    graph.add_edge(START, "slow")
    async with _asked(tmp_path, config_path, GraphSpec(name="slow", graph=graph), "slow") as baton:
        reply = (await _bot_texts(baton, "1", 1))[-1]
        assert "NodeTimeoutError: Node 'slow' exceeded its run timeout of 0.200s" in reply, reply


async def test_two_question_dicts_reading_the_context_on_either_database(database_url, config_path) -> None:
    """The approvals' details and the resumes' context as SQLite and PostgreSQL store and give them back."""
    def deploy(_state: State, runtime: Runtime[Asker]) -> State:
        said = interrupt({"question": "Deploy web?", "release": {"web": 42}, "for": runtime.context.user})
        return {"done": [f"deploy={bool(said)} for {runtime.context.user}"]}

    def migrate(_state: State, runtime: Runtime[Asker]) -> State:
        said = interrupt({"question": "Migrate the database?", "in": runtime.context.channel})
        return {"done": [f"migrate={bool(said)} in {runtime.context.channel}"]}

    def report(state: State) -> State:
        return {"reply": ", ".join(sorted(state["done"]))}

    graph = StateGraph(State, context_schema=Asker)
    for node in (deploy, migrate, report):
        graph.add_node(node.__name__, node)
    graph.add_edge(START, "deploy")
    graph.add_edge(START, "migrate")
    graph.add_edge(["deploy", "migrate"], "report")
    settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        baton.registry.add(GraphSpec(name="ship", graph=graph))
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1", event_id="e1",
                                                  user="alice", text="ship"))
        cards = {card.summary: card for card in [await _waiting_card(baton, 1), await _waiting_card(baton, 2)]}
        assert cards["Deploy web?"].details == {"release": '{"web": 42}', "for": "alice"}
        assert cards["Migrate the database?"].details == {"in": "general"}
        await _click(baton, list(cards).index("Migrate the database?") + 1, "reject")
        await _click(baton, list(cards).index("Deploy web?") + 1, "approve")
        texts = await _bot_texts(baton, "1", 3)
        assert texts[-1] == "deploy=True for alice, migrate=False in general", texts
