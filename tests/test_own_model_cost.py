"""What a graph's own chat model spends is counted on its run: tokens, and cost where ``baton.yaml`` prices the model.

Only ``bot.kit.chat`` / ``kit.structured`` recorded their calls. A LangChain ``create_agent(model, tools)`` graph, or
a node calling a model of its own, spent tokens that no run, digest or ``/metrics`` showed (an agent's 120 tokens
left the run's tokens and cost ``None``). LangChain's callbacks now count every chat-model call made in a run,
priced by its ``provider:model`` as LangChain names it (``ls_provider:ls_model_name``, as ``BATON_MODEL`` writes
it); the kit's own calls are counted once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langchain.agents import create_agent
from langchain.tools import tool
from langchain_core.language_models import LangSmithParams
from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGenerationChunk
from langgraph.graph import START, StateGraph
from sqlmodel import select

from bot import digest_stats, kit
from bot.app import Baton
from bot.messages import InboundMessage
from bot.metrics import Metrics
from bot.registry import GraphSpec
from bot.settings import Settings
from storage.models import Run, utcnow
from tests.fake_models import ScriptedModel, calls
from tests.support import until

PRICES = {"openai:gpt-4o-mini": {"input": 1.0, "output": 2.0}, "python:tests.fake_models:scripted": {
    "input": 10.0, "output": 20.0}}


class OpenAILike(ScriptedModel):
    """A scripted model naming itself to LangChain's callbacks as ``ChatOpenAI(model="gpt-4o-mini")`` does."""

    model_name: str = "gpt-4o-mini"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(ls_provider="openai", ls_model_name=self.model_name, ls_model_type="chat")


class State(TypedDict, total=False):
    text: str
    reply: str


def _model(tmp_path: Path, replies: list[dict[str, Any]], kind: type[ScriptedModel] = OpenAILike,
           name: str = "own") -> ScriptedModel:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(replies))
    return kind(messages=iter(()), script_path=str(path))


def _usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens}


@pytest.fixture
def priced(config_path: Path) -> Iterator[Path]:
    config_path.write_text(config_path.read_text() + "models:\n  prices: " + json.dumps(PRICES) + "\n")
    yield config_path


@asynccontextmanager
async def _asked(tmp_path: Path, config: Path, spec: GraphSpec, text: str, **settings: Any) -> AsyncIterator[Baton]:
    """A playground Baton with ``spec`` installed, asked ``text`` in thread "1" of #general."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    async with Baton(Settings(BATON_DATABASE_URL=url, BATON_CONFIG=config,  # type: ignore[call-arg]
                              BATON_ADAPTERS="playground", **settings)) as baton:
        baton.registry.add(spec)
        await baton.accept_message(InboundMessage(
            platform="playground", channel="general", thread="1", event_id="e1", user="alice", text=text))
        yield baton


async def _ended(baton: Baton, graph: str) -> Run:
    async def ended() -> Run | None:
        async with baton.db.read() as session:
            run = (await session.exec(select(Run).where(Run.graph == graph))).first()
        return run if run is not None and run.status in ("done", "failed") else None

    return await until(ended, what=f"the {graph} run to end")


def _graph(node: Any) -> Any:
    return StateGraph(State).add_node("act", node).add_edge(START, "act")


async def test_an_agents_own_model_is_counted_on_its_run_and_priced(tmp_path, priced) -> None:
    """``create_agent(model, tools)`` with a model of its own: two calls (a tool call, then the answer), 330 tokens
    at the price ``baton.yaml`` gives ``openai:gpt-4o-mini``. The run's tokens and cost were ``None``; a digest and
    ``/metrics`` read them from the run."""
    @tool
    def uptime() -> str:
        """How long the host has been up."""
        return "up 3 days"

    model = _model(tmp_path, [
        {"content": "", "tool_calls": [{"name": "uptime", "args": {}, "id": "call-1"}], "usage": _usage(100, 10)},
        {"content": "Up 3 days.", "usage": _usage(200, 20)}])
    agent = create_agent(model, tools=[uptime])
    async with _asked(tmp_path, priced, GraphSpec(name="agent", graph=agent), "agent how long is web up") as baton:
        run = await _ended(baton, "agent")
        assert (run.status, run.tokens) == ("done", 330), (run.status, run.error)
        assert run.cost == pytest.approx((300 * 1.0 + 30 * 2.0) / 1_000_000)
        async with baton.db.read() as session:
            stats = await digest_stats.collect(session, "playground", "general", run.started_at - timedelta(hours=1),
                                               utcnow() + timedelta(hours=1), [], utcnow())
        assert (stats["tokens"], stats["cost"]) == (330, pytest.approx(0.00036)), stats
        families = await Metrics(baton.db, "test", [], ["playground"])._shared()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}
        assert samples[("baton_model_tokens_total", (("graph", "agent"),))] == 330, samples
    assert len(calls(tmp_path / "own.json")) == 2


async def test_a_model_a_tool_calls_in_an_agent_run_as_a_subgraph_is_counted(tmp_path, priced) -> None:
    """An agent added as a node of an outer graph (a subgraph), whose tool asks a second model of its own: the
    agent's two calls and the tool's model, each once (30 + 300 + 3,000 tokens)."""
    helper = _model(tmp_path, [{"content": "web is fine", "usage": _usage(2000, 1000)}], name="helper")

    @tool
    async def ask_helper(question: str) -> str:
        """Ask the helper model."""
        return str((await helper.ainvoke(question)).content)

    agent = create_agent(_model(tmp_path, [
        {"content": "", "tool_calls": [{"name": "ask_helper", "args": {"question": "web?"}, "id": "c1"}],
         "usage": _usage(20, 10)},
        {"content": "Web is fine.", "usage": _usage(200, 100)}]), tools=[ask_helper])

    async def ask(state: State) -> dict[str, Any]:
        return {"messages": [HumanMessage(content=state["text"])]}

    class Outer(TypedDict, total=False):
        text: str
        messages: list[Any]

    outer = (StateGraph(Outer).add_node("ask", ask).add_node("agent", agent)
             .add_edge(START, "ask").add_edge("ask", "agent"))
    async with _asked(tmp_path, priced, GraphSpec(name="outer", graph=outer), "outer is web fine") as baton:
        run = await _ended(baton, "outer")
        assert (run.status, run.tokens) == ("done", 3330), (run.status, run.error)
        assert run.cost == pytest.approx((2220 * 1.0 + 1110 * 2.0) / 1_000_000)


async def test_a_plain_nodes_own_model_is_counted_and_priced_by_its_provider_and_model(tmp_path, priced) -> None:
    """A plain (sync) node calling its own model, in a graph thread: counted, priced by ``openai:gpt-4o-mini``."""
    model = _model(tmp_path, [{"content": "All good.", "usage": _usage(40, 5)}])

    def act(state: State) -> State:
        return {"reply": str(model.invoke([HumanMessage(content=state["text"])]).content)}

    async with _asked(tmp_path, priced, GraphSpec(name="check", graph=_graph(act)), "check web") as baton:
        run = await _ended(baton, "check")
        assert (run.status, run.tokens) == ("done", 45), (run.status, run.error)
        assert run.cost == pytest.approx((40 * 1.0 + 5 * 2.0) / 1_000_000)


async def test_a_model_with_no_price_gets_tokens_and_no_cost(tmp_path, priced) -> None:
    """A model ``baton.yaml`` has no price for (``openai:gpt-4.1``): tokens, and no cost rather than $0."""
    model = _model(tmp_path, [{"content": "Fine.", "usage": _usage(7, 3)}])
    model.model_name = "gpt-4.1"

    async def act(state: State) -> State:
        return {"reply": str((await model.ainvoke(state["text"])).content)}

    async with _asked(tmp_path, priced, GraphSpec(name="check", graph=_graph(act)), "check web") as baton:
        run = await _ended(baton, "check")
        assert (run.status, run.tokens, run.cost) == ("done", 10, None), run.error


async def test_the_kits_calls_count_once_beside_the_graphs_own_model(tmp_path, priced, monkeypatch) -> None:
    """A node calling ``kit.chat`` (recorded by the kit, priced by ``BATON_MODEL``), the configured model as any
    model (priced by ``BATON_MODEL`` too: it names itself ``scriptedmodel:``), and a model of its own: each once."""
    configured = tmp_path / "configured.json"
    configured.write_text(json.dumps([{"content": "kit", "usage": _usage(1000, 100)},
                                      {"content": "direct", "usage": _usage(2000, 200)}]))
    monkeypatch.setenv("BATON_TEST_MODEL_SCRIPT", str(configured))
    own = _model(tmp_path, [{"content": "own", "usage": _usage(30, 3)}])

    async def act(state: State) -> State:
        said = [(await kit.chat([HumanMessage(content="hi")])).content]
        model = kit.current().model
        assert model is not None
        said.append((await model.ainvoke("hi")).content)
        said.append((await own.ainvoke("hi")).content)
        return {"reply": " ".join(map(str, said))}

    async with _asked(tmp_path, priced, GraphSpec(name="both", graph=_graph(act)), "both",
                      BATON_MODEL="python:tests.fake_models:scripted") as baton:
        run = await _ended(baton, "both")
        assert (run.status, run.tokens) == ("done", 1100 + 2200 + 33), (run.status, run.error)
        assert run.cost == pytest.approx((3000 * 10.0 + 300 * 20.0 + 30 * 1.0 + 3 * 2.0) / 1_000_000)


class CutOff(OpenAILike):
    """A stream that reports its usage, then breaks (the connection dropped before its last event)."""

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        yield ChatGenerationChunk(message=AIMessageChunk(content="Half an ans", usage_metadata={
            "input_tokens": 50, "output_tokens": 4, "total_tokens": 54}))
        raise ConnectionError("the provider closed the stream")


async def test_a_failed_call_counts_what_the_provider_reported(tmp_path, priced) -> None:
    """A streamed call that broke after its usage came: the run fails, and the 54 tokens it was billed are kept."""
    model = _model(tmp_path, [], CutOff)

    async def act(state: State) -> State:
        parts = [chunk async for chunk in model.astream(state["text"])]
        return {"reply": "".join(str(part.content) for part in parts)}

    async with _asked(tmp_path, priced, GraphSpec(name="stream", graph=_graph(act)), "stream") as baton:
        run = await _ended(baton, "stream")
        assert (run.status, run.tokens) == ("failed", 54), (run.status, run.error)
        assert run.cost == pytest.approx((50 * 1.0 + 4 * 2.0) / 1_000_000)



class Hangs(OpenAILike):
    """A stream that reports its usage, then waits (a provider still writing), until the run is cancelled."""

    reported: Any = None  # an asyncio.Event set once the usage is out

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        yield ChatGenerationChunk(message=AIMessageChunk(content="Half", usage_metadata={
            "input_tokens": 50, "output_tokens": 4, "total_tokens": 54}))
        self.reported.set()
        await asyncio.Event().wait()


async def test_a_call_cancelled_with_its_run_counts_what_the_provider_reported(tmp_path, priced) -> None:
    """``cancel`` while the model streams: the run ends cancelled, with the 54 tokens the stream had reported."""
    model = _model(tmp_path, [], Hangs)
    model.reported = asyncio.Event()

    async def act(state: State) -> State:
        return {"reply": "".join([str(chunk.content) async for chunk in model.astream(state["text"])])}

    async with _asked(tmp_path, priced, GraphSpec(name="stream", graph=_graph(act)), "stream") as baton:
        await asyncio.wait_for(model.reported.wait(), 20)
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1", event_id="e2",
                                                  user="alice", text="cancel"))
        run = await _ended(baton, "stream")
        assert (run.status, run.cancelled, run.tokens) == ("failed", True, 54), (run.status, run.error)
        assert run.cost == pytest.approx((50 * 1.0 + 4 * 2.0) / 1_000_000)
