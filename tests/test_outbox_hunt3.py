"""The outbox under failure, a third hunt: a Retry-After no clock can hold."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from adapters.contract import Adapter, RetryLater
from bot.messages import Location, Message
from bot import outbox as outbox_module
from bot.outbox import Delivery, Outbox
from storage.db import Database
from storage.models import ChannelPace, OutboxMessage, utcnow


def _at(channel: str, thread: str) -> Location:
    return Location(platform="slack", workspace="T1", channel=channel, thread=thread)


class _Baton:
    def __init__(self, database: Database, outbox: Outbox) -> None:
        self.db, self.outbox = database, outbox


class _AsksFor(Adapter):
    name = "slack"
    seconds = 0.0

    async def send(self, delivery: Delivery) -> str | None:
        raise RetryLater(self.seconds, "Slack rate limit on chat.postMessage")


@pytest.mark.parametrize("seconds", [float("inf"), 1e12, 1e10, float("nan"), -5.0])
async def test_a_retry_after_beyond_any_clock_puts_the_message_off_for_a_bounded_while(
        database: Database, seconds: float) -> None:
    """A 429 whose Retry-After was no usable number of seconds (``inf``, ``1e12``: Slack's adapter takes any
    float the header holds) made ``retry`` raise (a date past year 9999): the row was never settled, its claim
    ran out and it was sent again into the same 429 at every claim's end, its channel never held. One of
    centuries (``1e10``) was stored as asked: the message and every later one of its channel waited for them.
    The wait is bounded (``MAX_RETRY_SECONDS``), and a NaN or a negative one is no wait."""
    outbox = Outbox(database, worker="me")
    async with database.session() as session:
        await outbox.enqueue(session, _at("C1", "t1"), Message.text("first"))
    [first] = await outbox.claim("slack", "me")
    adapter = _AsksFor(_Baton(database, outbox))  # type: ignore[arg-type]
    adapter.seconds = seconds
    await adapter._deliver(first)

    async with database.read() as session:
        row = (await session.exec(select(OutboxMessage))).one()
        pace = (await session.exec(select(ChannelPace))).one()
    assert row.status == "pending" and row.claimed_until is None  # settled: not sent again at its claim's end
    latest = utcnow() + timedelta(seconds=getattr(outbox_module, "MAX_RETRY_SECONDS", 3600.0) + 5)
    assert row.next_attempt_at <= latest and pace.next_at <= latest
