"""What the core does when a message is given up for good (``Outbox.on_failed``: the orchestrator ends a run whose
approval card the platform refused) failing: the message is still given up, once, and delivery goes on."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import select

from adapters.contract import Adapter, DeliveryRejected, RetryLater
from bot.app import Baton
from bot.messages import InboundMessage, Location, Message
from bot.outbox import Delivery, Outbox
from bot.settings import Settings
from storage.db import Database, Transaction, sqlite_path
from storage.migrate import upgrade
from storage.models import AuditEntry, OutboxMessage
from tests.db_proxy import DatabaseProxy
from tests.fake_slack import TEAM_ID, FakeSlack
from tests.support import until
from tests.test_outbox_hunt import fake_slack  # noqa: F401 (a fixture)
from tests.test_outbox_review import FirstSendFails, _Baton

GONE = "C0GONE0001"  # Baton was removed from it: Slack refuses every message there
OPEN = "C0OPEN0001"
CLAIM_SECONDS = 1.0  # BATON_LEASE_SECONDS: how soon a row left "sending" is claimed again


@pytest.fixture
async def slack_baton(fake_slack: FakeSlack, sqlite_url: str, config_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Baton]:
    """Baton serving the fake Slack, in this process; the hook's write refused by the database, as a bug's
    constraint violation would be (the event that ends a run whose card was refused)."""
    for name, value in fake_slack.env().items():
        monkeypatch.setenv(name, value)
    upgrade(sqlite_url)
    with closing(sqlite3.connect(sqlite_path(sqlite_url))) as connection:
        connection.execute("CREATE TRIGGER refused BEFORE INSERT ON inbound_events WHEN NEW.event_id LIKE "
                           "'baton-unposted:%' BEGIN SELECT RAISE(ABORT, 'the hook''s write is refused'); END")
    settings = Settings(BATON_DATABASE_URL=sqlite_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="slack", BATON_LEASE_SECONDS=CLAIM_SECONDS)
    async with Baton(settings) as baton:
        yield baton


async def _ask(baton: Baton, channel: str, text: str, ts: str) -> None:
    accepted = await baton.accept_message(InboundMessage(platform="slack", workspace=TEAM_ID, channel=channel,
                                                         thread=ts, event_id=f"Ev{ts}", user="alice", text=text,
                                                         addressed=True))
    assert accepted.status == "accepted", accepted


async def _rows(baton: Baton, channel: str) -> list[OutboxMessage]:
    async with baton.db.read() as session:
        return list((await session.exec(select(OutboxMessage).where(OutboxMessage.channel == channel)
                                        .order_by(OutboxMessage.id))).all())  # type: ignore[arg-type]


async def test_a_refused_card_is_given_up_once_though_what_ends_its_run_fails(
        slack_baton: Baton, fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture) -> None:
    """The hook runs in the transaction that marks the row failed: its error rolled that back, and the card stayed
    "sending" until its claim ran out; then it was posted again, refused again, its hook failed again, for as long
    as Baton ran, and every later message of its thread waited behind it."""
    fake_slack.shut_out(GONE)
    await _ask(slack_baton, GONE, "run restart service=web", "1700000000.000100")

    async def card_settled() -> str | None:
        rows = await _rows(slack_baton, GONE)
        card = [row.status for row in rows if row.payload.get("tone") == "approval"]
        return None if not card or any(row.status in ("pending", "sending") for row in rows) else "settled"
    await until(card_settled, "the refused card to be given up", timeout=10)
    tried = len(fake_slack.calls("chat.postMessage"))
    await _ask(slack_baton, OPEN, "run uptime", "1700000000.000200")  # the loop goes on
    await until(lambda: fake_slack.find("did uptime", thread="1700000000.000200"), "the next request's reply")
    assert [(row.payload["tone"], row.status) for row in await _rows(slack_baton, GONE)] == [
        ("progress", "failed"), ("approval", "failed")]
    assert len([call for call in fake_slack.calls("chat.postMessage") if call.args.get("channel") == GONE]) == 2
    assert len(fake_slack.calls("chat.postMessage")) > tried
    async with slack_baton.db.read() as session:
        audited = (await session.exec(select(AuditEntry.kind).where(AuditEntry.kind == "message.failed"))).all()
    assert audited == ["message.failed", "message.failed"]
    assert "what Baton does then (ending the run whose approval card it was) failed" in caplog.text


async def test_a_hook_that_raises_leaves_its_row_failed_and_the_loop_delivering(database: Database) -> None:
    """On PostgreSQL too, where the hook's failed statement aborts the transaction it was given."""
    outbox = Outbox(database, worker="me", claim_seconds=0.5)
    told: list[int] = []

    async def broken_hook(session: Transaction, row: OutboxMessage, error: str) -> None:
        told.append(row.id)  # type: ignore[arg-type]
        await session.exec(text("SELECT no_such_column FROM outbox"))  # type: ignore[call-overload]

    outbox.on_failed = broken_hook
    async with database.session() as session:
        for thread in ("t1", "t2"):
            await outbox.enqueue(session, Location(platform="discord", workspace="G1", channel="C1", thread=thread),
                                 Message.text(f"reply in {thread}"))
    adapter = FirstSendFails(_Baton(database, outbox), DeliveryRejected("400 Invalid Form Body"))  # for good
    await adapter.start()
    try:
        async def statuses() -> list[str] | None:
            async with database.read() as session:
                found = list((await session.exec(select(OutboxMessage.status)
                                                 .order_by(OutboxMessage.id))).all())  # type: ignore[arg-type]
            return found if "pending" not in found and "sending" not in found else None
        assert await until(statuses, "both rows settled", timeout=10) == ["failed", "sent"]
    finally:
        await adapter.stop()
    assert adapter.calls == ["reply in t1", "reply in t2"] and len(told) == 1
    assert outbox.undeliverable[("discord", "refused")] == 1
    async with database.read() as session:
        audited = (await session.exec(select(AuditEntry.kind))).all()
    assert audited == ["message.failed"]


class _RefusedAsTheDatabaseGoes(Adapter):
    """The first message meets a platform's answer (``first``) just as PostgreSQL goes away; it is back as soon as
    Baton has tried it once (the proxy's first refused connection). Later messages are posted."""

    name = "discord"

    def __init__(self, baton: _Baton, proxy: DatabaseProxy, first: Exception) -> None:
        super().__init__(baton)  # type: ignore[arg-type]
        self.proxy, self.first = proxy, first
        self.calls: list[str] = []
        self._back: asyncio.Task[None] | None = None

    async def send(self, delivery: Delivery) -> str | None:
        self.calls.append(delivery.message.plain_text())
        if len(self.calls) > 1:
            return f"m{delivery.id}"
        self.proxy.cut(count=True)
        self._back = asyncio.create_task(self._back_once_tried())
        raise self.first

    async def _back_once_tried(self) -> None:
        await until(lambda: self.proxy.refused >= 1, "Baton to meet the database away")
        await asyncio.to_thread(self.proxy.restore)


@pytest.fixture
def proxy() -> Iterator[DatabaseProxy]:
    started = DatabaseProxy().start()
    yield started
    started.stop()


@pytest.mark.postgres
@pytest.mark.parametrize(("first", "settled"), [
    (DeliveryRejected("400 Invalid Form Body"), ("failed", 1, 0)),  # type: ignore[list-item]
    (RetryLater(0.0, "429 Too Many Requests", hold_channel=False), ("sent", 2, 1))], ids=["refused", "put off"])
async def test_an_outcome_met_while_the_database_is_briefly_away_is_recorded_once_it_is_back(
        postgres_url: str, proxy: DatabaseProxy, first: Exception, settled: tuple[str, int, int]) -> None:
    """Only a sent message's mark was tried again while the database was away (for up to half its claim). A refusal
    or a 429 met as PostgreSQL blinked left the row "sending" until its claim ran out: the refused message was then
    sent again (posted, where the platform took it that time), the 429 counted as a failed try, towards giving the
    message up, and the thread's later messages waited out the claim."""
    upgrade(postgres_url)
    database, looking = Database(proxy.url(postgres_url)), Database(postgres_url)  # the test's look: not cut
    outbox = Outbox(database, worker="me", claim_seconds=4.0)  # the test's 10 s see a claim run out
    async with database.session() as session:
        await outbox.enqueue(session, Location(platform="discord", workspace="G1", channel="C1", thread="t1"),
                             Message.text("the reply"))
    adapter = _RefusedAsTheDatabaseGoes(_Baton(database, outbox), proxy, first)
    await adapter.start()
    try:
        async def row() -> tuple[str, int, int] | None:
            async with looking.read() as session:
                found = (await session.exec(select(OutboxMessage))).one()
            return None if found.status in ("pending", "sending") else (found.status, found.attempts, found.put_offs)
        assert await until(row, "the row settled", timeout=10) == settled
    finally:
        await adapter.stop()
        await database.dispose()
        await looking.dispose()
    assert adapter.calls == ["the reply"] * settled[1]
