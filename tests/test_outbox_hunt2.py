"""The outbox under failure, a second hunt: a backlog of edits of one message, an error the database cannot
store, a 429 that asks the whole channel to wait."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlmodel import select

from adapters.contract import Adapter, RetryLater
from bot.messages import Location, Message
from bot.outbox import Delivery, Outbox
from storage.db import Database
from storage.models import ChannelPace, OutboxMessage, utcnow

THREAD = Location(platform="slack", workspace="T1", channel="C1", thread="t1")


def update_pace() -> Any:
    """The channel's pace allows the next message now (as if its slot had come)."""
    return update(ChannelPace).values(next_at=utcnow() - timedelta(seconds=1))


async def _rows(database: Database) -> dict[int, OutboxMessage]:
    async with database.read() as session:
        return {row.id: row for row in (await session.exec(select(OutboxMessage))).all()}  # type: ignore[misc]


async def test_a_backlog_of_edits_of_one_message_goes_out_as_its_last_edit(database: Database) -> None:
    """A run's progress is one message, edited at each ``progress()``: each edit is a row. Sent one by one,
    a burst of 30 progress lines cost 30 platform calls (30 pace slots on Slack, one a second) before the
    run's reply behind them, each edit showing a state the next one replaced at once. The edits that a later
    edit of the same message follows straight away are superseded on a paced channel: only the last is sent
    (an unpaced platform, the playground, sends each: there an edit costs no wait)."""
    outbox = Outbox(database, worker="me")
    async with database.session() as session:
        progress = await outbox.enqueue(session, THREAD, Message.text("line 1", tone="progress"))
        for line in range(2, 31):
            await outbox.enqueue(session, THREAD, Message.text(f"line {line}", tone="progress"), kind="update",
                                 ref_outbox_id=progress)
        await outbox.enqueue(session, THREAD, Message.text("done: deployed"))
    [post] = await outbox.claim("slack", "me", pace_seconds=60.0)
    assert post.id == progress
    await outbox.delivered(post.id, "ts-1")
    assert await outbox.claim("slack", "me", pace_seconds=60.0) == []  # the channel's pace: one a slot

    async with database.session() as session:  # the channel's next slot comes
        await session.exec(update_pace())
    [edit] = await outbox.claim("slack", "me", pace_seconds=60.0)
    assert (edit.kind, edit.target_message_id, edit.message.plain_text()) == ("update", "ts-1", "line 30")
    assert edit.attempts == 1
    await outbox.delivered(edit.id, "ts-1")
    async with database.session() as session:
        await session.exec(update_pace())
    [reply] = await outbox.claim("slack", "me", pace_seconds=60.0)
    assert reply.message.plain_text() == "done: deployed"  # next, not 29 slots later
    await outbox.delivered(reply.id, "ts-2")

    rows = await _rows(database)
    assert all(row.status == "sent" for row in rows.values())  # nothing left, nothing failed
    superseded = [row for row in rows.values() if row.kind == "update" and row.id != edit.id]
    assert len(superseded) == 28  # lines 2 to 29
    assert all(row.platform_message_id is None and "superseded" in (row.error or "") for row in superseded)


async def test_an_edit_followed_by_another_message_is_sent_before_it_and_not_superseded(database: Database) -> None:
    """Only edits that follow one another are folded: an edit, a note, an edit go out as three calls (a post
    that failed for good is posted anew by its first edit, before the note, as it was stored)."""
    outbox = Outbox(database, worker="me")
    async with database.session() as session:
        refused = await outbox.enqueue(session, THREAD, Message.text("step 1"))
        await outbox.enqueue(session, THREAD, Message.text("step 2"), kind="update", ref_outbox_id=refused)
        await outbox.enqueue(session, THREAD, Message.text("a note"))
        await outbox.enqueue(session, THREAD, Message.text("step 3"), kind="update", ref_outbox_id=refused)
    [post] = await outbox.claim("slack", "me", pace_seconds=60.0)
    await outbox.failed(post.id, "msg_too_long")
    sent = []
    for shown_as in ("new-1", "note-1", "new-1"):
        async with database.session() as session:
            await session.exec(update_pace())
        [delivery] = await outbox.claim("slack", "me", pace_seconds=60.0)
        sent.append((delivery.kind, delivery.target_message_id, delivery.message.plain_text()))
        await outbox.delivered(delivery.id, shown_as)
    assert sent == [("update", None, "step 2"), ("post", None, "a note"), ("update", "new-1", "step 3")]
    async with database.session() as session:
        await session.exec(update_pace())
    assert await outbox.claim("slack", "me", pace_seconds=60.0) == []


async def test_an_error_the_database_cannot_store_still_settles_its_delivery(database: Database) -> None:
    """What a platform answered is stored with the row: a proxy's reason phrase in Latin-1 reaches the error
    text as lone surrogates (aiohttp reads a status line with ``surrogateescape``; discord.py's errors quote
    it), which neither SQLite nor PostgreSQL store, nor PostgreSQL a NUL. The retry, or the mark "failed",
    then raised: the row kept its claim and was sent again each time the claim ran out, past its last
    attempt, a message refused for good never marked failed, and its thread's later messages behind it."""
    outbox = Outbox(database, worker="me")
    async with database.session() as session:
        refused = await outbox.enqueue(session, THREAD, Message.text("refused"))
        await outbox.enqueue(session, THREAD, Message.text("behind it"))
    [first] = await outbox.claim("slack", "me")
    await outbox.retry(first.id, 0.0, "DiscordServerError: 502 Passerelle d\udce9faillante \x00")
    [again] = await outbox.claim("slack", "me")
    assert again.id == refused and again.attempts == 2
    await outbox.failed(again.id, "DeliveryRejected: 400 Requ\udce9te invalide\x00")
    [behind] = await outbox.claim("slack", "me")
    assert behind.message.plain_text() == "behind it"
    row = (await _rows(database))[refused]
    assert row.status == "failed"
    assert row.error is not None and "Requ" in row.error and "invalide" in row.error


async def test_an_edit_tried_before_is_not_superseded(database: Database) -> None:
    """An edit of a post that failed for good is posted anew; a try that timed out may have posted it. That
    edit is sent again as it is, as a later try (its adapter looks for the earlier try's post), not replaced by
    the next edit as a first try, which would post a second copy."""
    outbox = Outbox(database, worker="me")
    async with database.session() as session:
        refused = await outbox.enqueue(session, THREAD, Message.text("step 1"))
        first_edit = await outbox.enqueue(session, THREAD, Message.text("step 2"), kind="update",
                                          ref_outbox_id=refused)
    [post] = await outbox.claim("slack", "me", pace_seconds=60.0)
    await outbox.failed(post.id, "msg_too_long")
    async with database.session() as session:
        await session.exec(update_pace())
    [edit] = await outbox.claim("slack", "me", pace_seconds=60.0)
    assert (edit.id, edit.target_message_id) == (first_edit, None)
    await outbox.retry(edit.id, 0.0, "TimeoutError: Slack did not answer")  # it may have been posted
    async with database.session() as session:
        await outbox.enqueue(session, THREAD, Message.text("step 3"), kind="update", ref_outbox_id=refused)
        await session.exec(update_pace())
    [again] = await outbox.claim("slack", "me", pace_seconds=60.0)
    assert (again.id, again.attempts, again.message.plain_text()) == (first_edit, 2, "step 2")


class _RateLimited(Adapter):
    """A platform that answers every message with a 429 asking for half a minute."""

    name = "slack"

    async def send(self, delivery: Delivery) -> str | None:
        raise RetryLater(30.0, "Slack rate limit on chat.postMessage")


class _Baton:
    def __init__(self, database: Database, outbox: Outbox) -> None:
        self.db, self.outbox = database, outbox


async def test_a_rate_limit_s_retry_after_holds_its_channel_not_only_its_message(database: Database) -> None:
    """Slack's 429 on chat.postMessage says to wait before posting in that channel again. The outbox put
    only the refused message off: the next message for the channel, in another thread, went out at the
    channel's next slot, into the same 429 (one more refused call each, while Slack asked for quiet)."""
    outbox = Outbox(database, worker="me")
    async with database.session() as session:
        await outbox.enqueue(session, _at("C1", "t1"), Message.text("first"))
        await outbox.enqueue(session, _at("C2", "t3"), Message.text("another channel"))
    first, other = await outbox.claim("slack", "me")
    assert (first.message.plain_text(), other.message.plain_text()) == ("first", "another channel")
    await outbox.delivered(other.id, "ts-other")
    await _RateLimited(_Baton(database, outbox))._deliver(first)  # type: ignore[arg-type]

    async with database.session() as session:
        await outbox.enqueue(session, _at("C1", "t2"), Message.text("second, same channel"))
        await outbox.enqueue(session, _at("C2", "t3"), Message.text("another channel, again"))
    [again] = await outbox.claim("slack", "me")  # C1 waits as Slack asked, in each of its threads
    assert again.message.plain_text() == "another channel, again"  # the other channels go on
    async with database.session() as session:
        await session.exec(update_pace())  # Slack's half minute has passed
        await session.exec(update(OutboxMessage).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    assert [d.message.plain_text() for d in await outbox.claim("slack", "me")] == ["first", "second, same channel"]


def _at(channel: str, thread: str) -> Location:
    return Location(platform="slack", workspace="T1", channel=channel, thread=thread)
