"""What a Baton running for months keeps in memory must not grow with the threads, requests and clicks it saw."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from sqlmodel import func, select

from bot.app import Baton
from bot.messages import InboundMessage
from bot.settings import Settings
from storage.models import InboundEvent, ThreadRecord
from tests.support import until

THREADS = 60
CONFIG = {"approvers": ["bob"], "runbooks": {
    "noop": {"description": "Does nothing.", "command": ["/bin/true", "{n}"],
             "args": {"n": {"pattern": "^[0-9]+$"}}, "risk": "low", "timeout": 10}}}


@pytest.fixture
async def baton(tmp_path: Path) -> AsyncIterator[Baton]:
    config = tmp_path / "baton.yaml"
    config.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'b.db'}", BATON_CONFIG=config,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground", BATON_INSTANCE_NAME="growth")
    async with Baton(settings) as started:
        yield started


def asker(baton: Baton) -> object:
    numbers = itertools.count()

    async def ask(thread: str, text: str) -> None:
        accepted = await baton.accept_message(InboundMessage(
            platform="playground", channel="general", thread=thread, user="alice", text=text, addressed=True,
            event_id=f"growth-{next(numbers)}"))
        assert accepted.status == "accepted"
    return ask


async def all_handled(baton: Baton) -> bool:
    """Every event handled, every thread at rest, and no drain left in this process."""
    async with baton.db.read() as session:
        pending = (await session.exec(select(func.count()).select_from(InboundEvent).where(
            InboundEvent.status == "pending"))).one()
        busy = (await session.exec(select(func.count()).select_from(ThreadRecord).where(
            ThreadRecord.status == "running"))).one()
    assert baton.orchestrator is not None
    return not pending and not busy and not baton.orchestrator._tasks


async def test_leases_held_are_forgotten_once_a_thread_with_a_follow_up_is_drained(baton: Baton) -> None:
    ask = asker(baton)
    for n in range(THREADS):  # a follow-up written while the first request runs: the thread is drained again
        await ask(f"queued-{n}", f"run noop n={n}")
        await ask(f"queued-{n}", f"run noop n={n + THREADS}")
    await until(lambda: all_handled(baton), what="every request handled", timeout=60)
    assert baton.orchestrator is not None
    assert len(baton.orchestrator.leases._held_until) == 0
