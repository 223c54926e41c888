"""A cancel closed beside the drain must not leave the thread's lease held.

A replica refuses a ``cancel`` beside its run (``look_beside_runs``: the sender may not stop it) with a close of its
own, which checks no lease. The run ends as it decides so: the drain, going on with the thread's queue, has read the
cancel as pending and answers it too; its close finds the event closed already and raised ``LeaseLost``, and the
drain stopped with the lease still held. A request queued behind the cancel then waited for that lease to run out
(``BATON_LEASE_SECONDS``, 30 s) and a sweep. So did one behind an event whose outcome's commit was refused after
``_mark_done`` had marked the thread given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from bot.app import Baton
from bot.messages import InboundMessage
from bot.settings import Settings
from storage.models import InboundEvent, OutboxMessage, ThreadRecord
from tests.support import until
from tests.test_cancel import config_path  # noqa: F401 (a fixture: the ``sleepy`` runbook)


def _called_from(function: str) -> bool:
    """Whether the running code was called, however deep, from a function named ``function``."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


async def _say(baton: Baton, event_id: str, text: str, user: str) -> None:
    accepted = await baton.accept_message(InboundMessage(
        platform="playground", channel="general", thread="t1", event_id=event_id, user=user, text=text, addressed=True))
    assert accepted.status == "accepted", accepted


async def _event(baton: Baton, event_id: str) -> tuple[str, str | None]:
    async with baton.db.read() as session:
        event = (await session.exec(select(InboundEvent).where(InboundEvent.event_id == event_id))).one()
    return event.status, event.outcome


async def _done(baton: Baton, event_id: str) -> bool:
    return (await _event(baton, event_id))[0] == "done"


async def _lease_owner(baton: Baton) -> str | None:
    async with baton.db.read() as session:
        return (await session.exec(select(ThreadRecord.lease_owner).where(ThreadRecord.thread == "t1"))).one()


def _gate_sessions_of(baton: Baton, function: str, gate: asyncio.Event, reached: asyncio.Event) -> Callable[[], None]:
    """Hold every write transaction begun under ``function`` until ``gate`` is set (``reached`` says one waits);
    what undoes it."""
    db = baton.db
    session = db.session

    @contextlib.asynccontextmanager
    async def gated(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        if _called_from(function):
            reached.set()
            await gate.wait()
        async with session(*args, **kwargs) as transaction:
            yield transaction

    db.session = gated  # type: ignore[method-assign]
    return lambda: setattr(db, "session", session)



def _settings(database_url: str, config: Path, name: str) -> Settings:
    return Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config,  # type: ignore[call-arg]
                    BATON_ADAPTERS="playground", BATON_INSTANCE_NAME=name)

async def test_a_cancel_refused_beside_a_run_that_ends_meanwhile_does_not_stop_the_drain_holding_the_thread(
        database_url: str, config_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """carol (neither who asked nor an approver) writes ``cancel`` beside alice's run, and then ``run uptime``, to
    another replica. The run's replica decides to refuse the cancel; before its close commits, the run ends and the
    drain reads the cancel as pending. The refusal is stored first: the drain's answer finds the cancel closed. It
    stopped there ("stopped draining: event 2 was already handled elsewhere"), the thread's lease held: carol's
    request waited for it to run out (30 s) and a sweep. Now the cancel is answered once, by the refusal, and the
    drain goes on."""
    async with Baton(_settings(database_url, config_path, "replica-a")) as baton, \
            Baton(_settings(database_url, config_path, "replica-b")) as other:
        orchestrator = baton.orchestrator
        assert orchestrator is not None
        refusing, refuse = asyncio.Event(), asyncio.Event()
        ungate = _gate_sessions_of(baton, "look_beside_runs", refuse, refusing)
        handling, handle = asyncio.Event(), asyncio.Event()
        handle_cancel = orchestrator._handle_cancel

        async def held_cancel(event: InboundEvent, record: ThreadRecord) -> None:
            handling.set()  # the drain has read the cancel as pending
            await handle.wait()
            await handle_cancel(event, record)

        orchestrator._handle_cancel = held_cancel  # type: ignore[method-assign]
        try:
            await _say(baton, "e1", "run sleepy", "alice")
            pidfile = tmp_path / "sleepy.pid"
            pid = int(await until(lambda: pidfile.exists() and pidfile.read_text(), "the command to start"))
            await _say(other, "e2", "cancel", "carol")  # found by replica-a's sweep, within a second
            await asyncio.wait_for(refusing.wait(), 20)  # refused beside the run: its close is held
            await _say(other, "e3", "run uptime", "carol")  # queued: replica-b finds the thread held
            os.kill(pid, signal.SIGKILL)  # the run ends meanwhile
            await asyncio.wait_for(handling.wait(), 20)
            assert await _event(baton, "e2") == ("pending", None)
            refuse.set()
            await until(lambda: _done(baton, "e2"), "the refusal stored")
            assert await _event(baton, "e2") == ("done", "cancel refused")
            handle.set()
            # Well within a lease (30 s): the drain takes carol's request next.
            await until(lambda: _done(baton, "e3"), "carol's request handled", timeout=10)
            await until(lambda: not orchestrator._draining, "the thread's queue drained")
            assert await _lease_owner(baton) is None
            async with baton.db.read() as session:
                replies = [str(row.payload) for row in (await session.exec(select(OutboxMessage).where(
                    OutboxMessage.thread == "t1"))).all()]
            assert sum("can cancel this run. It goes on." in reply for reply in replies) == 1, replies
            assert not any("nothing was stopped" in reply for reply in replies), replies  # the drain's answer, undone
            assert any("did uptime" in reply for reply in replies), replies
        finally:
            ungate()
            refuse.set()
            handle.set()
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("baton")]
    assert not any("stopped draining" in message for message in warned), warned


class _CommitRefused(Exception):
    """A COMMIT the database refused, of a kind that is no outage (``database_unusable`` names none): PostgreSQL's
    40001 at the commit of a database an operator set to ``default_transaction_isolation = serializable``, say."""


async def test_a_commit_refused_after_the_lease_was_marked_given_back_does_not_stop_the_drain_holding_it(
        database_url: str, config_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """The transaction storing alice's result gives the thread back (nothing else queued) and is refused at its
    commit; carol's request is stored meanwhile on another replica. ``_handle`` stores the event's failure instead,
    which keeps the lease (carol's request is queued); but ``_mark_done`` had marked the thread given back before the
    refused commit, and the drain stopped, holding the lease: carol's request waited for it to run out (30 s)."""
    async with Baton(_settings(database_url, config_path, "replica-a")) as baton, \
            Baton(_settings(database_url, config_path, "replica-b")) as other:
        orchestrator = baton.orchestrator
        assert orchestrator is not None
        db, session = baton.db, baton.db.session
        refused: list[str] = []
        stored = asyncio.Event()

        @contextlib.asynccontextmanager
        async def refused_once(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            if refused or not _called_from("_finish_run"):
                async with session(*args, **kwargs) as transaction:
                    yield transaction
                return
            refused.append("alice's result")
            with contextlib.suppress(_CommitRefused):
                async with session(*args, **kwargs) as transaction:
                    yield transaction
                    raise _CommitRefused  # rolled back, as a refused COMMIT leaves it
            await _say(other, "e2", "run uptime", "carol")  # queued: replica-b finds the thread held
            stored.set()
            raise _CommitRefused("COMMIT refused")

        db.session = refused_once  # type: ignore[method-assign]
        try:
            await _say(baton, "e1", "run uptime", "alice")
            await asyncio.wait_for(stored.wait(), 20)  # alice's result refused at its commit, carol's request stored
            # Well within a lease (30 s): the drain takes carol's request next.
            await until(lambda: _done(baton, "e2"), "carol's request handled", timeout=10)
            await until(lambda: not orchestrator._draining, "the thread's queue drained")
            assert await _lease_owner(baton) is None
            assert await _event(baton, "e1") == ("done", "error: _CommitRefused")
        finally:
            db.session = session  # type: ignore[method-assign]
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("baton")]
    assert warned == ["event 1 failed"], warned
