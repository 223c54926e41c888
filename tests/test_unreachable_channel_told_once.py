"""A channel Baton cannot reach is told once, until a message gets through *there* again: a private reply (an
ephemeral) is no such message. Discord sends one as the click's interaction follow-up or as a direct message,
neither of which needs the thread; its delivery reset the channel's "told", and the next refusal there was a second
warning, as many as the private replies in between."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from adapters.contract import DeliveryRejected
from bot.app import Baton
from bot.messages import InboundClick, InboundMessage
from bot.outbox import Delivery
from bot.settings import Settings
from storage.models import OutboxMessage
from tests.support import until


async def test_a_private_reply_delivered_does_not_make_an_unreachable_thread_told_again(
        tmp_path: Path, config_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'u.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        playground = next(adapter for adapter in baton.adapters if adapter.name == "playground")
        sent = playground.send

        async def thread_locked(delivery: Delivery) -> Any:  # as Discord: the follow-up needs no thread
            if delivery.kind == "ephemeral":
                return await sent(delivery)
            raise DeliveryRejected("Discord: 403 Forbidden (error code: 50001): Missing Access", unreachable="removed",
                                   thread_only=True)

        playground.send = thread_locked  # type: ignore[method-assign]

        async def settled(rows: int) -> bool:
            async with baton.db.read() as session:
                found = (await session.exec(select(OutboxMessage.status))).all()
            return len(found) == rows and all(status in ("sent", "failed") for status in found)

        async def ask(event_id: str) -> None:
            await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="7",
                                                      event_id=event_id, user="alice", text="help", addressed=True))

        with caplog.at_level("INFO", logger="baton.outbox"):
            await ask("e1")
            await until(lambda: settled(1), "the reply refused")
            await baton.accept_click(InboundClick(platform="playground", channel="general", thread="7",
                                                  event_id="c1", user="bob", approval_id="gone", action="approve"))
            await until(lambda: settled(2), "the private answer delivered")
            await ask("e2")
            await until(lambda: settled(3), "the second reply refused")
    told = [record for record in caplog.records if "cannot be reached" in record.getMessage()]
    assert [record.levelname for record in told] == ["WARNING", "INFO"], [record.getMessage() for record in told]


async def test_the_threads_told_unreachable_are_remembered_up_to_a_bound(
        tmp_path: Path, config_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each locked Discord thread Baton had written in stayed remembered for good: the oldest is forgotten past
    ``UNREACHABLE_REMEMBERED``, and is told once more if it is refused again."""
    monkeypatch.setattr("bot.outbox.UNREACHABLE_REMEMBERED", 2)
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'u.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        playground = next(adapter for adapter in baton.adapters if adapter.name == "playground")

        async def thread_locked(_delivery: Delivery) -> Any:
            raise DeliveryRejected("Discord: 403 Forbidden (error code: 50083): Thread is archived",
                                   unreachable="archived", thread_only=True)

        playground.send = thread_locked  # type: ignore[method-assign]

        async def failed(rows: int) -> bool:
            async with baton.db.read() as session:
                found = (await session.exec(select(OutboxMessage.status))).all()
            return len(found) == rows and all(status == "failed" for status in found)

        with caplog.at_level("INFO", logger="baton.outbox"):
            for rows, (thread, event_id) in enumerate([("1", "e1"), ("2", "e2"), ("3", "e3"), ("1", "e4")], 1):
                await baton.accept_message(InboundMessage(platform="playground", channel="general", thread=thread,
                                                          event_id=event_id, user="alice", text="help",
                                                          addressed=True))
                await until(lambda rows=rows: failed(rows), f"reply {rows} refused")  # type: ignore[misc]
                await until(lambda rows=rows: len([record for record in caplog.records if "cannot be reached" in
                                                   record.getMessage()]) == rows, f"refusal {rows} logged")
        assert len(baton.outbox._unreachable) == 2
    told = [record for record in caplog.records if "cannot be reached" in record.getMessage()]
    assert [record.levelname for record in told] == ["WARNING"] * 4, [record.getMessage() for record in told]
