"""Killed (SIGKILL) at points of the one request path found by a sweep of kill points, then taken over by a new
``baton run`` on the same database: what the new process finds must be whole (the kill point is chosen by a
condition, never a time)."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph
from sqlmodel import select

from bot.app import Baton
from bot.kit import effect
from bot.messages import InboundMessage
from bot.registry import GraphSpec
from bot.runtime import RunServices
from bot.settings import Settings
from storage.models import Effect
from tests.support import ROOT, BatonProcess, slow_release, wait_for
from tests.test_cancel import rows
from tests.test_recovery import _until_replies

# A side effect, then a step that waits for the test (as a check of what the effect did would take its time).
AFTER_EFFECT = '''
"""Deploys once, then checks on the deploy."""
import os, time
from pathlib import Path
from typing import TypedDict
from langgraph.graph import END, START, StateGraph
from bot.kit import effect

HERE = Path(os.environ["CRASH_HUNT_DIR"])


class State(TypedDict, total=False):
    text: str
    reply: str


async def deploy(state: State) -> State:
    def act() -> str:
        with open(HERE / "deployed", "a") as out:
            out.write("deployed\\n")
        return "deployed v2"
    return {"reply": await effect("deploy", act)}


def check(state: State) -> State:
    (HERE / "checking").touch()
    while not (HERE / "checked").exists():
        time.sleep(0.01)
    return {"reply": state["reply"] + ", checked"}


graph = StateGraph(State)
graph.add_node("deploy", deploy)
graph.add_node("check", check)
graph.add_edge(START, "deploy")
graph.add_edge("deploy", "check")
graph.add_edge("check", END)
'''


@pytest.fixture
def crash_baton(tmp_path: Path, config_path: Path):  # type: ignore[no-untyped-def]
    """``baton run`` in a directory whose ``graphs`` holds Baton's and ours, with a short lease (a takeover soon)."""
    shutil.copytree(ROOT / "graphs", tmp_path / "graphs", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "graphs" / "aftereffect.py").write_text(AFTER_EFFECT)
    started: list[BatonProcess] = []

    def start(database_url: str, name: str) -> BatonProcess:
        process = BatonProcess(database_url, config_path, tmp_path, name,
                               {"CRASH_HUNT_DIR": str(tmp_path), "BATON_LEASE_SECONDS": "2"})
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


def test_killed_after_an_effect_ended_and_its_step_was_checkpointed_the_ledger_has_its_outcome(
        crash_baton, database_url, tmp_path) -> None:
    """The effect's outcome rode on the run's next write of Baton's, and its step's checkpoint came first: killed
    between them, the run was taken up from that checkpoint (the step never ran again) and ended "Done" with the
    effect's result, while the ledger said "started" for good and the audit log had no outcome for it."""
    first = crash_baton(database_url, "killed")
    thread = first.client().ask("@baton aftereffect")
    wait_for(lambda: (tmp_path / "checking").exists(), what="the step after the effect to begin")
    first.stop(signal.SIGKILL)
    (tmp_path / "checked").touch()

    second = crash_baton(database_url, "taker")
    reply = second.client().wait_reply(thread, "deployed v2, checked", timeout=30)
    assert reply["content"]["tone"] == "success"
    assert (tmp_path / "deployed").read_text() == "deployed\n"  # once
    [(name, status, result)] = rows(database_url, "SELECT name, status, result FROM effects")
    assert (name, status, "deployed v2" in str(result)) == ("deploy", "done", True), (name, status, result)
    audited = [kind for (kind,) in rows(database_url, "SELECT kind FROM audit_log ORDER BY id")]
    assert [kind for kind in audited if kind.startswith("effect.")] == ["effect.started", "effect.done"], audited


class _Deploy(TypedDict, total=False):
    text: str
    reply: str


def _deploy_then_check(ended: list[bool]) -> StateGraph:
    def act() -> str:
        ended.append(True)
        return "deployed v2"

    async def deploy(_state: _Deploy) -> _Deploy:
        return {"reply": await effect("deploy", act)}

    def check(state: _Deploy) -> _Deploy:
        return {"reply": state["reply"] + ", checked"}

    graph = StateGraph(_Deploy)
    graph.add_node("deploy", deploy)
    graph.add_node("check", check)
    graph.add_edge(START, "deploy")
    graph.add_edge("deploy", "check")
    graph.add_edge("check", END)
    return graph


async def test_no_checkpoint_is_written_before_the_outcome_of_an_effect_that_ended_is(
        database_url: str, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LangGraph saves a step's writes and its checkpoint at once, in the background. The effect's outcome was
    written before the step's writes, but the checkpoint went ahead while that transaction was still under way (a
    round trip to PostgreSQL): killed then (2 of 10 kill points swept there), the ledger said "started" for good.
    Every checkpoint write after the effect ended must find its outcome stored."""
    ended: list[bool] = []
    seen: list[str] = []
    settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        async def stored_outcome() -> None:
            if ended:
                async with baton.db.read() as session:
                    seen.append((await session.exec(select(Effect.status))).one())

        saver = AsyncSqliteSaver if baton.db.is_sqlite else AsyncPostgresSaver
        put, put_writes = saver.aput, saver.aput_writes

        async def aput(self: Any, *args: Any, **kwargs: Any) -> Any:  # after Baton's fence (``_Fenced``)
            await stored_outcome()
            return await put(self, *args, **kwargs)

        async def aput_writes(self: Any, *args: Any, **kwargs: Any) -> Any:
            await stored_outcome()
            return await put_writes(self, *args, **kwargs)

        audit = RunServices._audit

        async def outcome_takes_turns(self: RunServices, session: Any, kind: str, name: str, **detail: Any) -> None:
            if kind == "effect.done":  # the outcome's transaction, under way a few turns of the event loop
                for _ in range(20):
                    await asyncio.sleep(0)
            await audit(self, session, kind, name, **detail)

        monkeypatch.setattr(saver, "aput", aput)
        monkeypatch.setattr(saver, "aput_writes", aput_writes)
        monkeypatch.setattr(RunServices, "_audit", outcome_takes_turns)
        baton.registry.add(GraphSpec(name="deploy", graph=_deploy_then_check(ended), description="Deploys."))
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="deploy", addressed=True))
        assert "deployed v2, checked" in (await _until_replies(baton, "1", 1))[-1]
    assert seen and set(seen) == {"done"}, seen


def test_each_request_cut_off_by_a_stop_is_named_in_its_note(crash_baton, sqlite_url, counter) -> None:
    """Baton killed during a command, and the Baton that took over killed during the command queued behind it: the
    thread got two notes alike, "`runbook` stopped: its step `command` had been started by a Baton that stopped",
    and neither said which request to check before asking again (found by a sweep of kill points)."""
    first = crash_baton(sqlite_url, "first")
    pg = first.client()
    thread = pg.ask("@baton run slow seconds=9.9")  # each runs until released below
    pg.say("run slow seconds=9.8", thread=thread)
    started = "SELECT count(*) FROM effects WHERE status = 'started'"
    wait_for(lambda: rows(sqlite_url, started) == [(1,)], what="the first command to start")
    first.stop(signal.SIGKILL)
    second = crash_baton(sqlite_url, "second")
    wait_for(lambda: rows(sqlite_url, started) == [(2,)], timeout=30, what="the queued command to start")
    second.stop(signal.SIGKILL)
    slow_release(counter).touch()

    pg = crash_baton(sqlite_url, "third").client()
    wait_for(lambda: len([m for m in pg.bot_replies(thread) if "outcome is unknown" in m["text"]]) == 2, timeout=30,
             what="both requests told")
    notes = [m["text"].split("\n")[1].split(" stopped:")[0] for m in pg.bot_replies(thread)
             if "outcome is unknown" in m["text"]]
    assert notes == ["`run slow seconds=9.9`", "`run slow seconds=9.8`"], notes
