"""Writing graphs of one's own as the README says (a second round): what a graph author met that was wrong."""

from __future__ import annotations

import asyncio
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy
from sqlmodel import select

from bot.app import Baton
from bot.kit import approve, effect
from bot.messages import InboundClick, InboundMessage
from bot.registry import GraphSpec, _spec_from_module
from storage.models import Approval, PlaygroundMessage, Run
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


def _asking(ask: Any) -> StateGraph:
    def node(state: State) -> State:
        return {"reply": ask(state)}
    return _one_node(node)


async def test_approve_with_no_approvers_fails_the_run_saying_so(tmp_path, config_path) -> None:
    """``approve(..., approvers=[])``: the card waited for good ("approvers: none configured"), and a click on
    it was told "Nobody is configured to approve this (add `approvers` in baton.yaml)", which names approvers."""
    def ask(_state: State) -> str:
        return str(approve("Restart web?", approvers=[], risk="low").approved)

    async with _asked(tmp_path, config_path, GraphSpec(name="nobody", graph=_asking(ask)), "nobody") as baton:
        reply = await _reply(baton, "1")
        assert "approve(): approvers is empty, so nobody could approve" in reply, reply
        async with baton.db.read() as session:
            assert (await session.exec(select(Approval))).all() == []
        assert await _runs(baton) == [("nobody", "failed", "approve(): approvers is empty, so nobody could approve: "
                                       "name them, or leave approvers out for the graph's approvers from baton.yaml")]


async def test_approve_whose_stop_the_graph_catches_fails_the_run(tmp_path, config_path) -> None:
    """``try: approve(...) except Exception:`` catches the GraphInterrupt that stops the run for the question:
    nobody was asked, and the run went on and ended "done" as if someone had decided."""
    def ask(_state: State) -> str:
        try:
            return str(approve("Restart web?\nit is slow", risk="low").approved)
        except Exception as exc:  # what a careful-looking node does around a call it expects may fail
            return f"could not ask: {type(exc).__name__}"

    async with _asked(tmp_path, config_path, GraphSpec(name="careful", graph=_asking(ask)), "careful") as baton:
        reply = await _reply(baton, "1")
        assert "approve('Restart web?') was asked of nobody: the graph caught the GraphInterrupt" in reply, reply
        [(graph, status, _error)] = await _runs(baton)
        assert (graph, status) == ("careful", "failed")


async def test_approve_answered_then_asked_again_in_a_loop_runs_to_its_end(tmp_path, config_path) -> None:
    """The check above must not mistake a node that asks several times (a loop over hosts) for one that
    caught its stop: each question waits for its card, and the run ends with every answer."""
    def ask(state: State) -> str:
        return ", ".join(f"{host}={approve(f'Touch {host}?', risk='low').approved}" for host in state["text"].split())

    async with _asked(tmp_path, config_path, GraphSpec(name="hosts", graph=_asking(ask)), "hosts web api") as baton:
        for number in (1, 2):
            approval = await _waiting_card(baton, number)
            await baton.accept_click(InboundClick(platform="playground", channel="general", thread="1",
                                                  event_id=f"c{number}", user="bob", approval_id=approval.id,
                                                  action="approve"))
        texts = await _bot_texts(baton, "1", 3)  # two cards (edited once decided), then the result
        assert "web=True, api=True" in texts, texts
        assert await _runs(baton) == [("hosts", "done", None)]


async def _waiting_card(baton: Baton, count: int, timeout: float = 20) -> Approval:
    """The ``count``-th approval of the run, once it is asked."""
    async def card() -> Approval:
        while True:
            async with baton.db.read() as session:
                found = (await session.exec(select(Approval).order_by(Approval.created_at))).all()
            if len(found) >= count:
                return found[count - 1]
            await baton.outbox.wait("never-woken", 0.05)

    return await asyncio.wait_for(card(), timeout)


async def test_approve_with_an_empty_question_fails_the_run_saying_so(tmp_path, config_path) -> None:
    """``approve(f"{action}")`` with ``action`` empty: a card with no question on it ("*Approval needed*" and
    the requester's name) was posted, and an approver could approve it."""
    def ask(state: State) -> str:
        return str(approve(" ", details={"service": state["text"]}, risk="low").approved)

    async with _asked(tmp_path, config_path, GraphSpec(name="blank", graph=_asking(ask)), "blank web") as baton:
        reply = await _reply(baton, "1")
        assert "approve(): the question is empty" in reply, reply
        async with baton.db.read() as session:
            assert (await session.exec(select(Approval))).all() == []


async def test_effects_of_one_name_gathered_in_one_node_each_run(tmp_path, config_path) -> None:
    """README: "A node may call `effect` with one name several times (a loop over hosts): each call is an effect
    of its own". Restarting the hosts at once (``asyncio.gather`` over a helper that awaits ``effect``) restarted
    only the first host: each task gather starts copies the context, where the names' counts were kept, so the
    three shared one key; the others found its entry and the run failed "side effect 'restart' was started
    before and its outcome is unknown", of an effect of this very run."""
    from tests.test_graph_modules import _ledger

    ran: list[str] = []

    async def restart(host: str) -> str:
        return await effect("restart", lambda: ran.append(host) or f"restarted {host}")

    async def act(_state: State) -> State:
        done = await asyncio.gather(*(restart(host) for host in ("web", "api", "worker")))
        return {"reply": "; ".join(done)}

    async with _asked(tmp_path, config_path, GraphSpec(name="many", graph=_one_node(act)), "many") as baton:
        reply = await _reply(baton, "1")
        runs = await _runs(baton)
        ledger = await _ledger(baton)
    assert sorted(ran) == ["api", "web", "worker"], (ran, reply, runs, ledger)
    assert reply == "restarted web; restarted api; restarted worker", reply
    assert runs == [("many", "done", None)], runs


async def test_a_bytes_reply_holding_a_nul_is_shown_on_every_database(database_url, config_path) -> None:
    """``{"reply": subprocess.run(..., capture_output=True).stdout}`` is bytes, decoded with its NUL kept: on
    PostgreSQL the run's outcome could not be stored ("PostgreSQL text fields cannot contain NUL (0x00) bytes",
    with a traceback), the thread read "Something went wrong while handling this" and the run failed though the
    graph ended well; on SQLite the NUL was stored and shown."""
    from tests.test_authoring_hunt import _asked_on

    def act(_state: State) -> State:
        return {"reply": b"build log: a\x00b"}

    async with _asked_on(database_url, config_path, GraphSpec(name="log", graph=_one_node(act)), "log") as baton:
        shown = await _reply(baton, "1")
        async with baton.db.read() as session:
            run = (await session.exec(select(Run))).one()
    assert shown == "build log: a\ufffdb", shown
    assert (run.status, run.error) == ("done", None), (run.status, run.error)
