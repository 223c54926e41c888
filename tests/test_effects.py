"""The effects ledger: an effect runs at most once, and its outcome rides on the run's next write."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from sqlmodel import select

from bot.config import load_config
from bot.kit import Request
from bot.registry import GraphRegistry
from bot.runtime import EffectInDoubt, RunServices, Services
from storage.db import Database
from storage.models import AuditEntry, Effect, Run, ThreadRecord


@pytest.fixture
def services(database: Database, config_path: Path) -> RunServices:
    shared = Services(db=database, config=load_config(config_path), registry=GraphRegistry.discover())
    return RunServices(shared, Request(platform="playground", channel="general", thread="1", user="alice", text=""), None)


async def _ledger(database: Database) -> list[tuple[str, str, Any]]:
    async with database.read() as session:
        return [(row.key, row.status, row.result) for row in (await session.exec(select(Effect))).all()]


async def test_an_effects_outcome_is_written_with_the_runs_next_write_not_on_its_own(
        services: RunServices, database: Database) -> None:
    ran: list[str] = []

    async def restart() -> dict[str, Any]:
        ran.append("restart")
        return {"exit_code": 0}

    assert await services.run_effect_once("t|execute:1|command", "command", restart) == {"exit_code": 0}
    assert await _ledger(database) == [("t|execute:1|command", "started", None)]  # durable before it ran
    async with services.session():  # the run's next write: its progress, approval card or result
        pass
    assert await _ledger(database) == [("t|execute:1|command", "done", {"exit_code": 0})]
    assert ran == ["restart"]


async def test_a_node_that_runs_again_before_the_next_write_finds_its_effect_done(
        services: RunServices, database: Database) -> None:
    """LangGraph runs a node again within the same run (a retry policy): the outcome not written yet is
    written first, so the second try gets the recorded result instead of "outcome unknown"."""
    ran: list[str] = []

    async def deploy() -> str:
        ran.append("deploy")
        return "deployed v2"

    assert await services.run_effect_once("t|deploy:1|push", "push", deploy) == "deployed v2"
    assert await services.run_effect_once("t|deploy:1|push", "push", deploy) == "deployed v2"
    assert ran == ["deploy"]
    assert await _ledger(database) == [("t|deploy:1|push", "done", "deployed v2")]


async def test_an_outcome_whose_write_failed_stays_pending_and_is_flushed(
        services: RunServices, database: Database) -> None:
    async def notify() -> str:
        return "sent"

    await services.run_effect_once("t|notify:1|post", "post", notify)
    with pytest.raises(RuntimeError):
        async with services.session():  # e.g. fenced off by a lost lease: rolled back
            raise RuntimeError("this transaction is rolled back")
    assert await _ledger(database) == [("t|notify:1|post", "started", None)]
    await services.flush_effects()  # what Orchestrator._drive does after the run's last write
    assert await _ledger(database) == [("t|notify:1|post", "done", "sent")]


async def test_an_effect_started_before_a_crash_is_not_run_again(database: Database, config_path: Path) -> None:
    shared = Services(db=database, config=load_config(config_path), registry=GraphRegistry.discover())
    request = Request(platform="playground", channel="general", thread="1", user="alice", text="")
    ran: list[str] = []

    async def wipe() -> str:
        ran.append("wipe")
        return "wiped"

    crashed = RunServices(shared, request, None)
    await crashed.run_effect_once("t|wipe:1|rm", "rm", wipe)  # ... and the process dies before any other write
    with pytest.raises(EffectInDoubt):
        await RunServices(shared, request, None).run_effect_once("t|wipe:1|rm", "rm", wipe)
    assert ran == ["wipe"]


async def test_effects_are_in_the_audit_log_under_their_runs_request(database: Database, config_path: Path) -> None:
    """The audit log went from the chat event to the run and the approval, but had nothing of the side effects
    themselves: what ran, what failed, what was not run again for want of a known outcome."""
    shared = Services(db=database, config=load_config(config_path), registry=GraphRegistry.discover())
    request = Request(platform="playground", channel="general", thread="1", user="alice", text="")

    async def fails() -> str:
        raise OSError("disk full")

    async def works() -> str:
        return "ok"

    run = RunServices(shared, request, None, correlation_id="req-1")
    await run.run_effect_once("t|a:1|ok", "ok", works)
    with pytest.raises(OSError):
        await run.run_effect_once("t|a:1|bad", "bad", fails)
    await run.flush_effects()
    await run.run_effect_once("t|a:1|lost", "lost", works)  # ... and the process dies before its next write
    with pytest.raises(EffectInDoubt):
        await RunServices(shared, request, None, correlation_id="req-2").run_effect_once("t|a:1|lost", "lost", works)
    async with database.read() as session:
        entries = (await session.exec(select(AuditEntry).order_by(AuditEntry.id))).all()
    assert [(e.correlation_id, e.kind, e.detail["effect"]) for e in entries] == [
        ("req-1", "effect.started", "ok"), ("req-1", "effect.done", "ok"),  # with the next write: the next effect's
        ("req-1", "effect.started", "bad"), ("req-1", "effect.failed", "bad"), ("req-1", "effect.started", "lost"), ("req-2", "effect.in_doubt", "lost")]
    assert entries[3].detail["error"] == "OSError: disk full"


async def test_a_model_calls_tokens_written_beside_the_runs_next_write_record_no_effect_twice(
        database: Database, config_path: Path) -> None:
    """``bot.model_usage`` writes the tokens of a graph's own model call from a task of its own while the run goes
    on. That write carried the outcomes of the run's effects not written yet, as the run's next write does: both
    wrote them (two 'effect.done' in the audit log), and the first to end dropped as many outcomes from the list as
    it had written, which could be a later effect's, never written then."""
    shared = Services(db=database, config=load_config(config_path), registry=GraphRegistry.discover())
    async with database.session() as session:
        record = ThreadRecord(platform="playground", channel="general", thread="1", status="running")
        session.add(record)
        await session.flush()
        row = Run(thread_record_id=record.id, platform="playground", channel="general",  # type: ignore[arg-type]
                  graph="assistant", requested_by="alice", correlation_id="req-1")
        session.add(row)
        await session.flush()
        run_id = row.id
    request = Request(platform="playground", channel="general", thread="1", user="alice", text="")
    run = RunServices(shared, request, run_id, correlation_id="req-1")

    async def works() -> str:
        return "ok"

    await run.run_effect_once("t|a:1|push", "push", works)  # its outcome rides on the run's next write
    started = asyncio.Event()

    async def model_call_ended() -> None:  # as UsageCounter has it written
        started.set()
        await run.record_usage(AIMessage("hi", usage_metadata={"input_tokens": 10, "output_tokens": 5,
                                                                "total_tokens": 15}))

    async with run.session():  # the run's next write (a progress line, say), the model call's tokens beside it
        writing = asyncio.create_task(model_call_ended())
        await started.wait()
    await writing
    async with database.read() as session:
        kinds = [(e.kind, e.detail["effect"]) for e in (await session.exec(select(AuditEntry))).all()]
        tokens = (await session.get(Run, run_id)).tokens  # type: ignore[union-attr]
    assert kinds == [("effect.started", "push"), ("effect.done", "push")], kinds
    assert tokens == 15
    assert await _ledger(database) == [("t|a:1|push", "done", "ok")]


async def test_two_sessions_of_a_run_at_once_drop_no_effect_outcome_settled_meanwhile(
        database: Database, config_path: Path) -> None:
    """Two write sessions of one run open at once (parallel branches) each wrote the outcomes pending when it began
    and then dropped as many from the front of the list: an outcome settled after the second began was dropped
    unwritten, and its effect stayed 'started' (in doubt, were its node to run again)."""
    shared = Services(db=database, config=load_config(config_path), registry=GraphRegistry.discover())
    request = Request(platform="playground", channel="general", thread="1", user="alice", text="")
    run = RunServices(shared, request, None, correlation_id="req-1")
    run._settle("t|a:1|one", "one", "done", 1)
    first = run.session()
    await first.__aenter__()  # a branch's write: "one" rides on it
    run._settle("t|b:1|two", "two", "done", 2)
    began = asyncio.Event()

    async def other_branch_writes() -> None:
        began.set()
        async with run.session():  # takes "one" and "two"; waits for the writer while the first is open
            pass

    second = asyncio.create_task(other_branch_writes())
    await began.wait()
    run._settle("t|c:1|three", "three", "done", 3)  # settled after the second session began
    await first.__aexit__(None, None, None)
    await second
    assert [name for name, _params in run._settled] == ["three"]  # still to be written, not dropped
