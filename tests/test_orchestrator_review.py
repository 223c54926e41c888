"""A fresh-eyes review of the request path (``bot/orchestrator.py``): each test shows a defect it found."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.graph import END, START, StateGraph
from sqlmodel import select

from bot.app import Baton
from bot.messages import InboundClick, InboundMessage
from bot.orchestrator import MAX_TAKEOVERS
from bot.registry import GraphSpec
from bot.settings import Settings
from storage.models import Approval, InboundEvent, PlaygroundMessage, Run, ThreadRecord
from tests.fake_models import ToolCallingFakeModel, script
from tests.support import until
from tests.test_approvals_hunt import _baton
from tests.test_recovery import _until_replies
from tests.test_takeovers import _settled, _stops_baton, _taken_up_again


class _State(TypedDict, total=False):
    text: str
    reply: str


def _recording_graph(ran: list[str], release: asyncio.Event | None = None) -> StateGraph:
    """A graph that notes it ran, then (given ``release``) waits for it: a long deploy."""
    async def act(state: _State) -> _State:
        ran.append(state.get("text", ""))
        if release is not None:
            await release.wait()
        return {"reply": "shipped"}

    graph = StateGraph(_State)
    graph.add_node("act", act)
    graph.add_edge(START, "act")
    graph.add_edge("act", END)
    return graph


class _GatedModel(ToolCallingFakeModel):
    """A model that routes to ``graph`` once ``gate`` opens (a provider taking its time)."""

    graph: str = "ship"
    gate: Any = None
    asked: Any = None

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                         **kwargs: Any) -> ChatResult:
        self.asked.set()
        await self.gate.wait()
        message = AIMessage(content="", tool_calls=[{"name": "GraphGuess", "id": "g1", "type": "tool_call", "args": {
            "graph": self.graph, "confidence": 0.95, "alternatives": []}}])
        return ChatResult(generations=[ChatGeneration(message=message)])


async def _say(baton: Baton, event_id: str, text: str, user: str = "alice") -> None:
    await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                              event_id=event_id, user=user, text=text))


async def _bot_texts(baton: Baton) -> list[str]:
    async with baton.db.read() as session:
        return [row.text for row in (await session.exec(select(PlaygroundMessage).where(
            PlaygroundMessage.is_bot).order_by(PlaygroundMessage.id))).all()]


async def _texts_when(baton: Baton, count: int, word: str = "") -> list[str] | None:
    """The bot's messages once there are ``count`` of them (with ``word`` in one, if given)."""
    texts = await _bot_texts(baton)
    return texts if len(texts) >= count and any(word in text for text in texts) else None


async def _pending(baton: Baton) -> list[InboundEvent]:
    async with baton.db.read() as session:
        return list((await session.exec(select(InboundEvent).where(InboundEvent.status == "pending"))).all())


async def _cancelled_while_routed(baton: Baton) -> None:
    """alice asks for something the model routes, and writes ``cancel`` while it is still routing it."""
    gate, asked = asyncio.Event(), asyncio.Event()
    baton.services.model = _GatedModel(messages=iter(()), gate=gate, asked=asked)
    await _say(baton, "e1", "please get the new release out of the door")
    await asyncio.wait_for(asked.wait(), 20)
    await _say(baton, "e2", "cancel")
    gate.set()


async def test_a_cancel_written_while_the_model_routes_the_request_stops_its_run(tmp_path, config_path) -> None:
    """A request the model was still routing (the thread not yet "running") and a ``cancel`` written meanwhile by
    who asked: the cancel was stored naming no run, so it could neither stop the run that request then started
    (``look_beside_runs`` skips a cancel naming another run) nor withdraw the request (being handled by then). The
    run went on to its end, and the cancel was answered "Nothing is running in this thread"."""
    ran: list[str] = []
    release = asyncio.Event()
    spec = GraphSpec(name="ship", graph=_recording_graph(ran, release), description="Ship the release.")
    async with _baton(tmp_path, config_path, spec) as baton:
        await _cancelled_while_routed(baton)
        await until(lambda: ran, "the run to start")
        try:
            await until(lambda: _no_pending(baton), "the cancel to be handled", timeout=10)
        finally:
            release.set()  # else Baton's stop waits out its grace for the run
        texts = await until(lambda: _texts_when(baton, 1, "cancelled"), "the cancel's answer")
        assert not any("Nothing is running" in text for text in texts), texts
        assert any("alice cancelled `ship` after" in text for text in texts), texts
        assert not any("after 0ms" in text for text in texts), texts  # it ran until the cancel reached it
        async with baton.db.read() as session:
            run = (await session.exec(select(Run))).one()
        assert (run.status, run.error) == ("failed", "cancelled by alice")


async def test_a_cancel_a_routed_request_outran_is_told_so(tmp_path, config_path) -> None:
    """The same, the run ending before the cancel reached it: the cancel was answered "Nothing is running in this
    thread, so there is nothing to cancel", as if the request had never run; it is told it came too late."""
    ran: list[str] = []
    spec = GraphSpec(name="ship", graph=_recording_graph(ran), description="Ship the release.")
    async with _baton(tmp_path, config_path, spec) as baton:
        await _cancelled_while_routed(baton)
        await until(lambda: _no_pending(baton), "both events handled")
        texts = await until(lambda: _texts_when(baton, 2), "both answers")
        assert ran and not any("Nothing is running" in text for text in texts), texts
        assert any("The run was over before your `cancel` reached it" in text for text in texts), texts


async def _no_pending(baton: Baton) -> bool:
    return not await _pending(baton)


async def test_a_cancel_written_while_anothers_request_is_routed_still_withdraws_the_senders_own(
        tmp_path, config_path) -> None:
    """The cancel of someone who may not stop the run being routed (carol, beside alice's request) withdraws the
    requests carol queued before it, as a cancel written while the thread's request waited to start does; it is
    not refused as a cancel of alice's run (which goes on)."""
    ran: list[str] = []
    noted: list[str] = []
    gate, asked, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    ship = GraphSpec(name="ship", graph=_recording_graph(ran, release), description="Ship the release.")
    note = GraphSpec(name="note", graph=_recording_graph(noted), description="Take a note.",
                     patterns=[re.compile(r"^note (?P<what>.+)$")])
    async with _baton(tmp_path, config_path, ship, note) as baton:
        baton.services.model = _GatedModel(messages=iter(()), gate=gate, asked=asked)
        await _say(baton, "e1", "please get the new release out of the door")
        await asyncio.wait_for(asked.wait(), 20)
        await _say(baton, "e2", "note the release went out", user="carol")
        await _say(baton, "e3", "cancel", user="carol")
        gate.set()
        try:
            await until(lambda: ran, "alice's run to start")
            assert await baton.orchestrator.look_beside_runs() == 0  # as the sweep does while the run runs
        finally:
            release.set()
        await until(lambda: _no_pending(baton), "every event handled")
        texts = await until(lambda: _texts_when(baton, 1, "carol cancelled this request before it started"),
                            "carol's request withdrawn")
        assert "shipped" in texts and noted == [] and not any("can cancel this run" in text for text in texts), texts


def _scripted_model_settings(tmp_path: Path, config_path: Path) -> Settings:
    """Baton's settings with the scripted model (``tests.fake_models``), on SQLite, with the playground."""
    database = f"sqlite:///{tmp_path / 'r.db'}"
    return Settings(BATON_DATABASE_URL=database, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                    BATON_MODEL="python:tests.fake_models:scripted", BATON_ADAPTERS="playground")


def _guessing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, graph: str) -> None:
    """The scripted model is unsure between ``graph`` and ``help``: a "Which one?" card."""
    script_path = tmp_path / "script.json"
    monkeypatch.setenv("BATON_TEST_MODEL_SCRIPT", str(script_path))
    script(script_path, [{"tool_calls": [{"name": "GraphGuess", "id": "g1", "args": {
        "graph": graph, "confidence": 0.4, "alternatives": ["help"]}}]}])


async def _chosen_and_stopped(baton: Baton, graph: str) -> Any:
    """alice chooses ``graph`` on the "Which one?" card, and its run stops Baton; what runs graphs is returned."""
    await _say(baton, "e1", "hmm, the thing?")
    await _until_replies(baton, "1", 1)  # the "Which one?" card
    async with baton.db.read() as session:
        card = (await session.exec(select(Approval).where(Approval.kind == "choice"))).one()
    graph_run = baton.runtime.run
    baton.runtime.run = _stops_baton  # type: ignore[method-assign]
    await baton.accept_click(InboundClick(platform="playground", channel="general", thread="1", event_id="c1",
                                          user="alice", approval_id=card.id, action=graph))
    await _settled(baton)
    return graph_run


async def test_a_run_chosen_on_a_which_one_card_that_stops_baton_each_time_is_not_taken_up_for_ever(
        tmp_path, config_path, monkeypatch) -> None:
    """A run chosen on a "Which one?" card and under way each time Baton stopped was taken up again at every start,
    for good: the click that chose it went on with it (``_handle_choice``) without counting the takeover, so
    ``MAX_TAKEOVERS`` never failed it, as it fails a run a message or an approval started."""
    _guessing(tmp_path, monkeypatch, "status")
    async with Baton(_scripted_model_settings(tmp_path, config_path)) as baton:
        graph_run = await _chosen_and_stopped(baton, "status")
        for _ in range(MAX_TAKEOVERS + 1):
            await _taken_up_again(baton, "c1")
        baton.runtime.run = graph_run  # type: ignore[method-assign]
        async with baton.db.read() as session:
            chosen = (await session.exec(select(Run).where(Run.graph == "status"))).one()
        assert (chosen.status, chosen.takeovers) == ("failed", MAX_TAKEOVERS + 1)
        reply = (await _until_replies(baton, "1", 2))[-1]
    assert f"Baton stopped {MAX_TAKEOVERS + 1} times while this `status` run was under way" in reply, reply


async def test_a_chosen_run_whose_graph_is_gone_after_a_stop_fails_instead_of_running_for_good(
        tmp_path, config_path, monkeypatch) -> None:
    """Taken up again after a stop with the graph chosen on its "Which one?" card removed meanwhile, the click was
    answered "alice already chosen `gone`" and the run and its thread stayed "running" for good (a run a message
    started fails so: "the `gone` graph is not installed on this Baton any more")."""
    _guessing(tmp_path, monkeypatch, "gone")
    async with Baton(_scripted_model_settings(tmp_path, config_path)) as baton:
        baton.registry.add(GraphSpec(name="gone", graph=_recording_graph([]), description="Goes away."))
        graph_run = await _chosen_and_stopped(baton, "gone")
        baton.runtime.run = graph_run  # type: ignore[method-assign]
        del baton.registry._specs["gone"]
        await _taken_up_again(baton, "c1")
        async with baton.db.read() as session:
            chosen = (await session.exec(select(Run).where(Run.graph == "gone"))).one()
            record = (await session.exec(select(ThreadRecord))).one()
        assert (chosen.status, record.status) == ("failed", "failed")
        reply = (await _until_replies(baton, "1", 2))[-1]
    assert "the `gone` graph is not installed on this Baton any more" in reply, reply
