"""The outbox and its delivery loop, from a fresh-eyes review: what the loop does with a batch after a 429."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import update
from sqlmodel import select

from adapters.contract import Adapter, RetryLater
from adapters.slack import SlackAdapter
from bot.messages import Location, Message
from bot.outbox import Delivery, Outbox
from storage.db import Database
from storage.models import OutboxMessage
from tests.fake_slack import FakeSlack
from tests.support import ON_SQLITE_ONLY, until
from tests.test_outbox_hunt import _deliver_due, fake_slack, slack_outbox  # noqa: F401 (fixtures)


class _Baton:
    def __init__(self, database: Database, outbox: Outbox) -> None:
        self.db, self.outbox = database, outbox


class FirstSendFails(Adapter):
    """An unpaced platform (as Discord) whose first call raises ``first`` and that posts everything else."""

    name = "discord"

    def __init__(self, baton: _Baton, first: Exception) -> None:
        super().__init__(baton)  # type: ignore[arg-type]
        self.calls: list[str] = []
        self._first = first

    async def send(self, delivery: Delivery) -> str | None:
        self.calls.append(delivery.message.plain_text())
        if len(self.calls) == 1:
            raise self._first
        return f"m{delivery.id}"


def _at(channel: str, thread: str) -> Location:
    return Location(platform="discord", workspace="G1", channel=channel, thread=thread)


async def _rows(database: Database) -> list[OutboxMessage]:
    async with database.read() as session:
        rows = await session.exec(select(OutboxMessage).order_by(OutboxMessage.id))  # type: ignore[arg-type]
        return list(rows.all())


@pytest.fixture
async def adapter(database: Database) -> AsyncIterator[FirstSendFails]:
    # a 429 that asks the channel to wait half a minute
    adapter = FirstSendFails(_Baton(database, Outbox(database, worker="me")),
                             RetryLater(30.0, "Discord: 429 Too Many Requests (Cloudflare)"))
    yield adapter
    await adapter.stop()


@pytest.mark.parametrize("taken", ["claimed", "handed over"])
async def test_a_429_holds_its_channel_for_the_rest_of_the_batch_it_came_in(
        database: Database, adapter: FirstSendFails, taken: str) -> None:
    """On an unpaced platform one claim takes the first row of each thread, several of one channel; and the final
    replies handed over while the loop was busy come as one batch too. A 429 asking the channel to wait (hold_channel)
    was stored as a hold, but the loop went on through its batch: the next message for that channel, in another
    thread, went out at once, into the same 429."""
    outbox = adapter.baton.outbox
    if taken == "claimed":
        async with database.session() as session:
            for thread in ("t1", "t2"):
                await outbox.enqueue(session, _at("C1", thread), Message.text(f"reply in {thread}"))
        await adapter.start()
    else:
        await adapter.start()
        handed = []
        for thread in ("t1", "t2"):
            async with database.session() as session:
                handed.append(await outbox.enqueue_claimed(session, _at("C1", thread),
                                                           Message.text(f"reply in {thread}")))
        assert all(handed)
        for delivery in handed:  # after their commits, before the loop wakes: one batch
            outbox.hand_over("discord", delivery)

    async def settled() -> bool:
        rows = await _rows(database)
        return len(rows) == 2 and all(row.status != "sending" for row in rows) and rows[0].error is not None
    await until(settled, "the rate-limited message put off, and the other settled")
    assert adapter.calls == ["reply in t1"]  # nothing more to channel C1 while Discord asked for quiet there
    first, second = await _rows(database)
    assert (first.status, second.status) == ("pending", "pending")
    assert second.attempts == 0  # never sent: its first try is still to come (nothing of it to look for)


class _RateLimitedThenBroken(Adapter):
    """A platform that rate-limits every try (nothing posted) and then fails once, as a 502 does."""

    name = "slack"
    limited = 0

    async def send(self, delivery: Delivery) -> str | None:
        if self.limited:
            self.limited -= 1
            raise RetryLater(0.0, "Slack rate limit on chat.postMessage", hold_channel=False)
        raise ConnectionResetError("Connection reset by peer")


async def test_a_message_put_off_by_rate_limits_is_not_given_up_at_its_first_failure(database: Database) -> None:
    """Every try counted towards ``max_attempts``, a 429's too, though the platform posted nothing and asked only
    to wait: a message rate-limited (or held by a refused token, tried every five minutes) twelve times was given
    up for good, and never shown, at the first connection reset after that."""
    outbox = Outbox(database, worker="me")
    adapter = _RateLimitedThenBroken(_Baton(database, outbox))  # type: ignore[arg-type]
    adapter.limited = adapter.max_attempts
    async with database.session() as session:
        await outbox.enqueue(session, Location(platform="slack", workspace="T1", channel="C1", thread="t1"),
                             Message.text("the deploy is done"))
    for _try in range(adapter.max_attempts + 1):
        [delivery] = await outbox.claim("slack", "me")
        await adapter._deliver(delivery)
    [row] = await _rows(database)
    assert (row.status, row.error) == ("pending", "ConnectionResetError: Connection reset by peer")
    assert (row.attempts, row.put_offs) == (adapter.max_attempts + 1, adapter.max_attempts)  # its first failure


@ON_SQLITE_ONLY
async def test_slack_s_clean_failures_kept_for_retries_are_bounded(
        fake_slack: FakeSlack, slack_outbox: tuple[Outbox, SlackAdapter], database: Database,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A try Slack answered with a 429 is remembered as clean (nothing of it posted), for the next try of the row
    to skip looking for it. With several replicas, that next try is often another replica's: the row is settled
    there, never here, and its entry stayed for good, one more for every rate-limited message, for as long as Baton
    ran (as ``send_steps``'s did, bounded since by ``STEPS_KEPT``). The oldest are forgotten past ``TRIES_KEPT``."""
    monkeypatch.setattr("adapters.slack.TRIES_KEPT", 2, raising=False)
    outbox, adapter = slack_outbox
    fake_slack.fail("chat.postMessage", 429, times=5, retry_after=1)
    async with database.session() as session:
        for n in range(5):
            await outbox.enqueue(session, Location(platform="slack", workspace="T1", channel=f"C0BUSY000{n}",
                                                   thread="1.000001"), Message.text(f"reply {n}"))
    assert len(await _deliver_due(outbox, adapter)) == 5
    async with database.session() as session:  # another replica took each retry, and sent it
        sent_elsewhere = update(OutboxMessage).values(status="sent", claimed_by="other")
        await session.exec(sent_elsewhere)  # type: ignore[call-overload]
    assert len(adapter._clean_failures) <= 2
