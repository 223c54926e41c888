"""What a Baton running for months keeps in memory must not grow with the threads, requests and clicks it saw."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import yaml
from sqlmodel import func, select

from adapters.contract import Adapter, RetryLater
from adapters.slack import SlackAdapter
from bot.app import Baton
from bot.messages import InboundMessage, Location, Message
from bot.outbox import Delivery, Outbox
from bot.settings import Settings
from storage.db import Database
from storage.models import InboundEvent, OutboxMessage, ThreadRecord
from tests.fake_slack import FakeSlack
from tests.support import ON_SQLITE_ONLY, until
from tests.test_outbox_hunt import _deliver_due, fake_slack, slack_outbox  # noqa: F401 (fixtures)

THREADS = 60
CONFIG = {"approvers": ["bob"], "runbooks": {
    "noop": {"description": "Does nothing.", "command": ["/bin/true", "{n}"],
             "args": {"n": {"pattern": "^[0-9]+$"}}, "risk": "low", "timeout": 10},
    "gate": {"description": "Runs until its file is there.", "risk": "low", "timeout": 20,
             "command": ["/bin/sh", "-c", 'while [ ! -e "$0" ]; do sleep 0.01; done', "{file}"],
             "args": {"file": {"pattern": "^[A-Za-z0-9_./-]+$"}}}}}


@pytest.fixture
async def baton(tmp_path: Path) -> AsyncIterator[Baton]:
    config = tmp_path / "baton.yaml"
    config.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    settings = Settings(  # type: ignore[call-arg]
        BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'b.db'}", BATON_CONFIG=config, BATON_ADAPTERS="playground",
        BATON_INSTANCE_NAME="growth")
    async with Baton(settings) as started:
        yield started


def asker(baton: Baton) -> Callable[[str, str], Awaitable[None]]:
    """Ask Baton as alice in a playground thread, each time with an event id of its own."""
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
    return not pending and not busy and not baton.orchestrator._tasks and not baton.orchestrator._beside


async def test_leases_held_are_forgotten_once_a_thread_with_a_follow_up_is_drained(baton: Baton) -> None:
    ask = asker(baton)
    for n in range(THREADS):  # a follow-up written while the first request runs: the thread is drained again
        await ask(f"queued-{n}", f"run noop n={n}")
        await ask(f"queued-{n}", f"run noop n={n + THREADS}")
    await until(lambda: all_handled(baton), what="every request handled", timeout=60)
    assert baton.orchestrator is not None
    assert len(baton.orchestrator.leases._held_until) == 0


async def test_threads_whose_asides_were_cut_short_by_their_runs_end_are_forgotten(baton: Baton,
                                                                                      tmp_path: Path) -> None:
    """``status`` written beside a run is answered beside it; one written while another is being answered asks for
    another look. When the run ended meanwhile, the look was left to the drain, and its thread stayed asked for."""
    orchestrator = baton.orchestrator
    assert orchestrator is not None
    answering: list[asyncio.Event] = []  # one an answer begun beside the run, and what lets it go on
    answer = orchestrator._aside_answer

    async def held_answer(*args: object) -> object:
        task = asyncio.current_task()
        if task is not None and task.get_name().startswith("asides-"):  # not the drain's, after the run
            go_on = asyncio.Event()
            answering.append(go_on)
            await go_on.wait()
        return await answer(*args)  # type: ignore[arg-type]

    orchestrator._aside_answer = held_answer  # type: ignore[method-assign]
    ask = asker(baton)
    for n in range(5):
        thread, release = f"beside-{n}", tmp_path / f"release-{n}"
        answering.clear()
        await ask(thread, f"run gate file={release}")
        await until(lambda: len(orchestrator._running) == 1, what="the run to start")
        await ask(thread, "help")
        await until(lambda: len(answering) == 1, what="the first aside to be answered beside the run")
        await ask(thread, "status")
        await ask(thread, "help")  # both read at the next look, once the first is answered
        answering[0].set()
        await until(lambda: len(answering) == 2, what="the second aside to be answered beside the run")
        await ask(thread, "status")  # asks for another look, while the third waits behind the second
        release.touch()
        await until(lambda: not orchestrator._running, what="the run to end")
        answering[1].set()
        await until(lambda: all_handled(baton), what="the asides to be answered")
    assert len(orchestrator._beside_again) == 0


@ON_SQLITE_ONLY
async def test_slack_forgets_the_deliveries_it_refused_for_good(
        fake_slack: FakeSlack, slack_outbox: tuple[Outbox, SlackAdapter], database: Database) -> None:
    """Baton removed from a channel its digests still post to: each post Slack refuses (not_in_channel) is failed
    for good, and the adapter must not keep its try for a retry that never comes."""
    outbox, adapter = slack_outbox
    fake_slack.fail("chat.postMessage", 200, error="not_in_channel", times=THREADS)
    async with database.session() as session:
        for n in range(THREADS):
            await outbox.enqueue(session, Location(platform="slack", workspace="T1", channel="C0GONE0001",
                                                   thread=f"{n}.000001"), Message.text(f"digest {n}"))
    while await _deliver_due(outbox, adapter):
        pass
    async with database.read() as session:
        statuses = (await session.exec(select(OutboxMessage.status))).all()
    assert statuses == ["failed"] * THREADS
    assert len(adapter._clean_failures) == 0


async def test_the_steps_kept_for_retries_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery cut off after its first step keeps that step's result for its retry (``send_steps``); one whose
    retry another replica took is never settled here, and stayed for good. The oldest are forgotten past
    ``STEPS_KEPT``."""
    monkeypatch.setattr("adapters.contract.STEPS_KEPT", 2)

    class Steps(Adapter):
        name = "steps"

        async def send(self, delivery: Delivery) -> str | None:
            raise NotImplementedError

    adapter = Steps(None)  # type: ignore[arg-type]  # send_steps needs no Baton
    for delivery_id in range(1, 6):
        delivery = Delivery(id=delivery_id, kind="post", location=Location(platform="x", channel="c", thread="t"),
                            message=Message.text("two parts"), target_user=None, target_message_id=None,
                            attempts=0)

        async def first() -> str:
            return "part-1"

        async def second() -> str:
            raise RetryLater(1.0, "rate limited")

        with pytest.raises(RetryLater):
            await adapter.send_steps(delivery, [first, second])
    assert sorted(adapter._steps_done) == [4, 5]
