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


async def test_a_final_reply_is_not_handed_over_into_a_channel_a_429_holds(database: Database) -> None:
    """Discord is unpaced (pace 0). A 429 (Retry-After past discord.py's 30 s) holds its channel: the claim
    respects that (ChannelPace), but ``enqueue_claimed`` checks the channel only on a paced platform, so the
    next final reply in another thread of that channel was handed straight to the adapter, into the 429."""
    outbox = Outbox(database, worker="me")
    outbox.attach("discord", 0.0)
    async with database.session() as session:
        await outbox.enqueue(session, _on_discord("C1", "t1"), Message.text("first"))
    [first] = await outbox.claim("discord", "me")
    await outbox.retry(first.id, 60, "Discord rate limit", hold_channel=True)
    async with database.session() as session:
        held = await outbox.enqueue_claimed(session, _on_discord("C1", "t2"), Message.text("reply"))
        elsewhere = await outbox.enqueue_claimed(session, _on_discord("C2", "t3"), Message.text("another channel"))
    assert held is None  # stored for the delivery loop, which waits for the channel's hold
    assert elsewhere is not None  # another channel is not held
    assert await outbox.claim("discord", "me") == []


def _on_discord(channel: str, thread: str) -> Location:
    return Location(platform="discord", workspace="G1", channel=channel, thread=thread)
