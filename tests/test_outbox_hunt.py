"""The outbox under failure: backlogs, paced channels, edits of posts that never made it, platforms nobody serves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import or_, update
from sqlmodel import select

from adapters.slack import SlackAdapter
from bot.messages import Location, Message
from bot.outbox import Outbox
from bot.redaction import Redactor
from bot.settings import Settings
from storage.db import Database
from storage.models import AuditEntry, OutboxMessage
from tests.fake_slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack, shown_text


def _at(channel: str, thread: str, platform: str = "slack") -> Location:
    return Location(platform=platform, workspace="T1", channel=channel, thread=thread)


@pytest.mark.asyncio
async def test_a_paced_channels_backlog_does_not_starve_the_other_channels(database: Database) -> None:
    """Slack is paced (one message a second per channel). The claim read the first 20 due rows and took
    one of each channel's: with 20 threads of #busy waiting (a catch-up after an outage), every row it
    read was #busy's, so #quiet's message waited behind #busy's whole backlog, one second per row."""
    outbox = Outbox(database, worker="me")
    async with database.session() as session:
        for thread in range(25):
            await outbox.enqueue(session, _at("busy", f"t{thread}"), Message.text(f"busy {thread}"))
        await outbox.enqueue(session, _at("quiet", "q1"), Message.text("quiet"))

    claimed = await outbox.claim("slack", "me", pace_seconds=60.0)
    assert sorted(d.message.plain_text() for d in claimed) == ["busy 0", "quiet"]  # one per channel, each its first
    assert await outbox.claim("slack", "me", pace_seconds=60.0) == []  # both channels wait for their next slot


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    yield fake
    fake.stop()


class _Baton:
    """What the Slack adapter's delivery reads of Baton: its settings and its outbox."""

    def __init__(self, fake: FakeSlack, tmp_path: Path, outbox: Outbox) -> None:
        self.settings = Settings(SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET,  # type: ignore[call-arg]
                                 SLACK_API_URL=fake.api_url, BATON_CONFIG=str(tmp_path / "absent.yaml"))
        self.outbox = outbox


@pytest.fixture
async def slack_outbox(fake_slack: FakeSlack, tmp_path: Path, database: Database) -> AsyncIterator[tuple[Outbox, SlackAdapter]]:
    outbox = Outbox(database, worker="me")
    adapter = SlackAdapter(_Baton(fake_slack, tmp_path, outbox))  # type: ignore[arg-type]
    adapter.client.session = aiohttp.ClientSession()
    try:
        yield outbox, adapter
    finally:
        await adapter.client.session.close()


async def _deliver_due(outbox: Outbox, adapter: SlackAdapter) -> list[str]:
    """What the delivery loop does with the rows due now: claim, send, settle. The texts it claimed."""
    claimed = await outbox.claim("slack", "me")
    for delivery in claimed:
        await adapter._deliver(delivery)
    return [delivery.message.plain_text() for delivery in claimed]


PROGRESS = Location(platform="slack", workspace="T1", channel="C0GENERAL1", thread="1.000001")


async def _edit(outbox: Outbox, database: Database, post_id: int, text: str) -> None:
    async with database.session() as session:
        await outbox.enqueue(session, PROGRESS, Message.text(text, tone="progress"), kind="update", ref_outbox_id=post_id)


@pytest.mark.asyncio
async def test_every_edit_of_a_deleted_post_does_not_post_a_new_copy(
        fake_slack: FakeSlack, database: Database, slack_outbox: tuple[Outbox, SlackAdapter]) -> None:
    """A run's progress message is edited at each step. Someone deleted it: the first edit posted its new
    version in the thread (Slack said message_not_found), and so did every later edit, as each edited the
    deleted original again: one new message a step. Each edit now edits the message that shows the post."""
    outbox, adapter = slack_outbox
    async with database.session() as session:
        post = await outbox.enqueue(session, PROGRESS, Message.text("step 1 of 4", tone="progress"))
    assert await _deliver_due(outbox, adapter) == ["step 1 of 4"]
    [original] = fake_slack.messages(thread=PROGRESS.thread)
    fake_slack.delete(PROGRESS.channel, original.ts)

    for step in (2, 3, 4):
        await _edit(outbox, database, post, f"step {step} of 4")
        assert await _deliver_due(outbox, adapter) == [f"step {step} of 4"]
    shown = [shown_text(message) for message in fake_slack.messages(thread=PROGRESS.thread)]
    assert len(shown) == 1 and "step 4 of 4" in shown[0], shown


@pytest.mark.asyncio
async def test_every_edit_of_a_post_that_failed_does_not_post_a_new_copy(
        fake_slack: FakeSlack, database: Database, slack_outbox: tuple[Outbox, SlackAdapter]) -> None:
    """A post Slack refused for good (or gave up on after its retries) has no Slack id: its first edit is
    posted in its place, and every later edit was posted again beside it."""
    outbox, adapter = slack_outbox
    fake_slack.fail("chat.postMessage", 400, error="invalid_blocks")
    async with database.session() as session:
        post = await outbox.enqueue(session, PROGRESS, Message.text("step 1 of 3", tone="progress"))
    assert await _deliver_due(outbox, adapter) == ["step 1 of 3"]
    assert fake_slack.messages(thread=PROGRESS.thread) == []

    for step in (2, 3):
        await _edit(outbox, database, post, f"step {step} of 3")
        assert await _deliver_due(outbox, adapter) == [f"step {step} of 3"]
    shown = [shown_text(message) for message in fake_slack.messages(thread=PROGRESS.thread)]
    assert len(shown) == 1 and "step 3 of 3" in shown[0], shown


@pytest.mark.asyncio
async def test_messages_stored_for_a_platform_nobody_here_serves_are_explained_to_the_operator(
        database: Database, caplog: pytest.LogCaptureFixture) -> None:
    """Discord's tokens were removed from .env while replies to Discord threads were still queued: Baton
    started with Slack only, and those rows waited for ever without a word. They are still kept (a replica
    serving Discord, or this one once it does again, sends them), and the operator is told at start."""
    outbox = Outbox(database, worker="me")
    async with database.session() as session:
        await outbox.enqueue(session, _at("D1", "D1", platform="discord"), Message.text("queued before the restart"))
        await outbox.enqueue(session, _at("D2", "D2", platform="discord"), Message.text("this too"))
        await outbox.enqueue(session, _at("C1", "1.0"), Message.text("slack's own"))
    outbox.attach("slack", 1.0)

    assert await outbox.report_unserved() == {"discord": 2}
    assert "2 outbox message(s) for discord are waiting" in caplog.text
    assert "this Baton does not deliver discord" in caplog.text and "slack" not in caplog.text
    assert await outbox.claim("discord", "replica-with-discord") != []  # kept, for whoever serves Discord


@pytest.mark.asyncio
async def test_a_stored_message_this_version_cannot_read_does_not_stop_the_platform_s_deliveries(
        database: Database, caplog: pytest.LogCaptureFixture) -> None:
    """A row stored by another Baton version (a replica already upgraded in a rolling deploy, or before a
    rollback) with a part this version does not know made every claim of its platform fail: nothing more
    was delivered there, and the log said "claiming ... failed" twice a second. It is left for a replica
    that reads it (its thread's later messages wait behind it, in order), and said once."""
    outbox = Outbox(database, worker="me")
    table = {"parts": [{"kind": "table", "rows": [["a", "b"]]}], "tone": "info"}
    async with database.session() as session:
        newer = await outbox.enqueue(session, _at("C1", "1.0"), Message.text("from a newer Baton"))
        await outbox.enqueue(session, _at("C1", "1.0"), Message.text("after it, in its thread"))
        for thread in range(20):  # as many as a claim reads: they must not hide the rows after them
            await outbox.enqueue(session, _at("C3", f"3.{thread}"), Message.text("newer too"))
        await outbox.enqueue(session, _at("C2", "2.0"), Message.text("another thread"))
        await session.exec(update(OutboxMessage).where(  # type: ignore[call-overload]
            or_(OutboxMessage.id == newer, OutboxMessage.channel == "C3")).values(payload=table))

    claimed = await outbox.claim("slack", "me")
    assert [d.message.plain_text() for d in claimed] == ["another thread"]
    assert await outbox.claim("slack", "me") == []  # the unreadable rows are still not taken, nor what waits behind them
    assert caplog.text.count(f"outbox message {newer} ") == 1, caplog.text
    assert "cannot read" in caplog.text
    async with database.read() as session:
        row = await session.get(OutboxMessage, newer)
    assert row is not None and (row.status, row.attempts) == ("pending", 0)  # kept as it was, for a replica that reads it


@pytest.mark.asyncio
async def test_a_stored_message_this_version_cannot_read_does_not_make_idle_polls_write(database: Database) -> None:
    """The idle poll's first look found the unreadable row due, so every poll (twice a second, for as long as
    the row stays: after a rollback, for good) opened a write transaction, with a sync of the disk on SQLite."""
    outbox = Outbox(database, worker="me")
    table = {"parts": [{"kind": "table", "rows": [["a", "b"]]}], "tone": "info"}
    async with database.session() as session:
        newer = await outbox.enqueue(session, _at("C1", "1.0"), Message.text("from a newer Baton"))
        await session.exec(update(OutboxMessage).where(OutboxMessage.id == newer).values(payload=table))  # type: ignore[call-overload]
    assert await outbox.claim("slack", "me") == []  # reads it, and learns it cannot
    writes = []
    session = database.session
    database.session = lambda *args, **kwargs: writes.append(1) or session(*args, **kwargs)  # type: ignore[method-assign]
    try:
        for _ in range(3):
            assert await outbox.claim("slack", "me") == []
    finally:
        database.session = session  # type: ignore[method-assign]
    assert writes == []


@pytest.mark.asyncio
async def test_rows_claimed_but_not_sent_when_the_process_stops_go_back_to_the_queue(database: Database) -> None:
    """A delivery loop claims up to 20 rows and sends them one by one. Stopped while sending the second (a
    deploy), the ones after it stayed claimed by a process that was gone: every replica, the restarted one
    included (it has a new name), waited out the claim (``BATON_LEASE_SECONDS``, up to a day) to send them.
    The one in flight keeps its claim (it may have reached the platform), as before."""
    stopping, survivor = Outbox(database, worker="stopping"), Outbox(database, worker="survivor")
    stopping.attach("slack", 0.0)
    async with database.session() as session:
        for thread in ("1.0", "2.0", "3.0", "4.0"):
            await stopping.enqueue(session, _at("C1", thread), Message.text(f"reply in {thread}"))
    first, in_flight, *not_started = await stopping.claim_if_wanted("slack")
    stopping.begin(first.id)
    await stopping.delivered(first.id, "ts-1")
    stopping.begin(in_flight.id)
    stopping.detach("slack")  # ... and its loop is cancelled while it sends the second

    assert await stopping.give_back_unsent() == 2
    taken = await survivor.claim("slack", "survivor")  # at once: no claim to wait out
    assert [(d.id, d.attempts) for d in taken] == [(d.id, 1) for d in not_started]
    async with database.read() as session:
        sent, sending = await session.get(OutboxMessage, first.id), await session.get(OutboxMessage, in_flight.id)
    assert sent is not None and (sent.status, sent.platform_message_id) == ("sent", "ts-1")  # settled: left alone
    assert sending is not None and (sending.status, sending.claimed_by) == ("sending", "stopping")


@pytest.mark.asyncio
async def test_a_row_cut_off_mid_send_keeps_its_claim_even_after_a_delivery_whose_outcome_was_not_recorded(
        database: Database) -> None:
    """The row in flight was guessed as "the first one not settled": when recording the first delivery failed
    (the database away for a moment), the second, cut off mid-send by the stop, went back to the queue at
    once, and another replica posted it again. Rows are now known to have begun."""
    stopping = Outbox(database, worker="stopping")
    stopping.attach("slack", 0.0)
    async with database.session() as session:
        for thread in ("1.0", "2.0", "3.0"):
            await stopping.enqueue(session, _at("C1", thread), Message.text(f"reply in {thread}"))
    unrecorded, in_flight, not_started = await stopping.claim_if_wanted("slack")
    stopping.begin(unrecorded.id)  # sent; recording it failed, so it was never settled
    stopping.begin(in_flight.id)  # ... and the stop cut this one off mid-send
    stopping.detach("slack")
    assert await stopping.give_back_unsent() == 1
    async with database.read() as session:
        rows = {row.id: row for row in (await session.exec(select(OutboxMessage))).all()}
    assert [rows[d.id].claimed_by for d in (unrecorded, in_flight, not_started)] == ["stopping", "stopping", None]


@pytest.mark.asyncio
async def test_a_message_the_platform_refuses_for_good_is_in_the_audit_log_under_its_correlation(
        database: Database) -> None:
    """A digest to an archived channel was audited "digest.posted" when it was stored, and its refusal
    was only a log line: the audit trail of the request (or digest) said nothing of the message never
    shown. The refusal is audited under the message's correlation id, its error without Baton's secrets."""
    secret = "xoxb-1111-2222-abcdefsecret"
    outbox = Outbox(database, worker="me", redactor=Redactor([secret]))
    async with database.session() as session:
        await outbox.enqueue(session, _at("C0OLD", ""), Message.text("the daily digest"), correlation_id="digest-7")
    [delivery] = await outbox.claim("slack", "me")
    await outbox.failed(delivery.id, f"chat.postMessage: is_archived (sent with {secret})")

    async with database.read() as session:
        [entry] = (await session.exec(select(AuditEntry).where(AuditEntry.correlation_id == "digest-7"))).all()
        row = await session.get(OutboxMessage, delivery.id)
    assert (entry.kind, entry.platform, entry.channel) == ("message.failed", "slack", "C0OLD")
    assert entry.detail == {"outbox_id": delivery.id, "message_kind": "post",
                            "error": "chat.postMessage: is_archived (sent with [redacted])", "reason": "refused"}
    assert row is not None and row.status == "failed" and secret not in (row.error or "")


@pytest.mark.asyncio
async def test_a_refused_message_and_a_rate_limited_one_keep_the_thread_going_in_order(
        fake_slack: FakeSlack, database: Database, slack_outbox: tuple[Outbox, SlackAdapter]) -> None:
    """(Checked, not a bug.) A message Slack refuses for good is failed and the thread goes on; one it
    rate-limits (Retry-After: 0) is retried, and the message after it waits for it rather than overtaking."""
    outbox, adapter = slack_outbox
    fake_slack.fail("chat.postMessage", 400, error="msg_too_long")
    fake_slack.fail("chat.postMessage", 429, retry_after=0)
    async with database.session() as session:
        for text in ("refused", "rate-limited once", "after it"):
            await outbox.enqueue(session, PROGRESS, Message.text(text))
    rounds = [await _deliver_due(outbox, adapter) for _ in range(4)]
    assert rounds == [["refused"], ["rate-limited once"], ["rate-limited once"], ["after it"]]
    assert [shown_text(m) for m in fake_slack.messages(thread=PROGRESS.thread)] == ["rate-limited once", "after it"]
