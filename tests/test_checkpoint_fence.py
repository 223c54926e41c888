"""A replica that stalled past its thread's lease writes no LangGraph checkpoint once it resumes, even before its
heartbeat has noticed the thread taken over (``storage.checkpointer``'s fence)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from sqlmodel import select

from bot.app import Baton
from bot.messages import InboundMessage
from bot.registry import GraphSpec
from bot.settings import Settings
from storage.models import Approval, ThreadRecord
from tests.support import until
from tests.test_replicas_hunt2 import (_replies_with, _settled, _started, _taken_by, _think_then_ask,
                                      approved_once_by_the_taker, thinking_on)


def _stalled_for(baton: Baton, seconds: float) -> None:
    """``baton``'s own clock jumps ``seconds`` ahead: what a SIGSTOP or a frozen VM that long looks like to it."""
    leases = baton.orchestrator.leases
    real = getattr(leases, "clock", time.monotonic)
    leases.clock = lambda: real() + seconds  # type: ignore[method-assign]


async def test_a_step_ending_after_a_stall_writes_no_checkpoint_before_the_heartbeat_notices(
        database_url: str, config_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The replica stalled in a step with no side effect (a slow model answer) past its lease; another took the
    thread over and posted the card. Resumed, the step ended before the heartbeat's next beat (it beats every
    third of a lease) and LangGraph wrote its checkpoint beside the new holder's: the card's question was no
    longer the thread's latest, Approve said 'no longer current', and the thread waited for good. The write now
    confirms the lease first, finds it gone, and the run stops there."""
    caplog.set_level(logging.WARNING)
    first_thought = asyncio.Event()
    settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as stalled, Baton(settings) as taker:
        await thinking_on(stalled, taker, first_thought)
        _stalled_for(stalled, settings.lease_seconds * 2)
        await _taken_by(taker)
        async with taker.db.read() as session:
            card = (await session.exec(select(Approval))).one()

        first_thought.set()  # the stalled step ends now, long before that replica's next heartbeat
        await _settled(stalled)
        assert "lost the lease" not in caplog.text, "the heartbeat noticed: this test would not show the fence"
        assert "was stalled; its step's checkpoint is not written" in caplog.text
        await approved_once_by_the_taker(taker, card)


async def test_a_run_that_did_not_stall_asks_the_database_nothing_more_for_its_checkpoints(
        database_url: str, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fence costs a healthy run no statement: its lease was taken or renewed less than half a lease ago.
    And a run that stalled but still holds its thread renews the lease and goes on."""
    settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        leases = baton.orchestrator.leases
        renewals: list[int] = []
        renew = leases.renew

        async def counted(record_id: int) -> bool:
            renewals.append(record_id)
            return await renew(record_id)

        monkeypatch.setattr(leases, "renew", counted)
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="run uptime"))
        await until(lambda: _replies_with(baton, "finished"), "the first run's reply")
        await _settled(baton)
        assert renewals == []

        first_thought = asyncio.Event()
        thinking: list[str] = []
        baton.registry.add(GraphSpec(name="change", graph=_think_then_ask(first_thought, thinking)))
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="2",
                                                  event_id="e2", user="alice", text="change"))
        await until(_started(thinking), "the run to think")
        _stalled_for(baton, settings.lease_seconds * 2)  # nobody took the thread meanwhile
        first_thought.set()
        async with baton.db.read() as session:
            record_id = (await session.exec(select(ThreadRecord.id).where(ThreadRecord.thread == "2"))).one()
        await until(lambda: _card_posted(baton), "the card after the stall")
        await _settled(baton)
    assert renewals and set(renewals) == {record_id}


async def _card_posted(baton: Baton) -> bool:
    async with baton.db.read() as session:
        return (await session.exec(select(Approval))).first() is not None
