"""Many approval cards expiring at once in one channel must not hold up the answers to people asking now.

Each expired card is edited (its buttons go) and its thread told, two messages a card, and a platform takes about one
message a second per channel (Slack). Delivered in the order stored, 10,000 cards expiring together put 20,000
messages ahead of the answer to whoever asked the bot something next in that channel: over five hours. The expiry's
messages are housekeeping: a fresh answer goes first, and they drain whenever the channel has nothing fresher.
"""

from __future__ import annotations

import sqlite3
import sys
from contextlib import closing
from pathlib import Path

from sqlalchemy import func, insert, text, update
from sqlalchemy.dialects import sqlite
from sqlmodel import select

from bot.app import Baton
from bot.messages import InboundMessage, Location, Message
from bot.outbox import _PROMOTE, LANES, Delivery, Outbox, _due_statement, _row
from bot.settings import Settings
from storage.db import Database, sqlite_path
from storage.migrate import upgrade
from storage.models import Approval, ChannelPace, OutboxMessage, Run, utcnow
from storage.sqlite_prepared import plan_for
from tests.support import until

CARDS = 200  # one expiry pass's batch (SWEEP_BATCH): they all expire together
# Stored for a platform this Baton does not serve (it serves the playground, which it paces not at all): the test
# delivers them itself, as a paced adapter's loop would, one claim a slot.
SLACK = "slack"
CHANNEL = "ops"


def _config(directory: Path) -> Path:
    """A runbook whose every service is a request of its own (no "already running" link to the first card)."""
    config = directory / "baton.yaml"
    config.write_text(f"""
approvers: ["alice", "bob"]
runbooks:
  deploy:
    description: Deploy a service.
    command: [{sys.executable!r}, "-c", "import sys; print('deployed', sys.argv[1])", "{{service}}"]
    args:
      service:
        pattern: "^svc-[0-9]+$"
    risk: high
    timeout: 10
""")
    return config


async def _count(baton: Baton, statement: object) -> int:
    async with baton.db.read() as session:
        return int((await session.exec(statement)).one())  # type: ignore[call-overload]


async def _deliver_paced(outbox: Outbox, database: Database) -> list[list[Delivery]]:
    """Deliver every stored Slack row as a paced delivery loop would, one claim a sending slot, every channel's next
    slot brought forward after each claim (a second passing, without waiting for it): what each claim took."""
    claims: list[list[Delivery]] = []
    while deliveries := await outbox.claim(SLACK, outbox.worker, pace_seconds=1.0):
        assert len({delivery.location.channel for delivery in deliveries}) == len(deliveries)  # one a channel a slot
        claims.append(deliveries)
        for delivery in deliveries:
            await outbox.delivered(delivery.id, f"ts-{delivery.id}")
        async with database.session() as session:
            await session.exec(update(ChannelPace).values(next_at=database.now()))  # type: ignore[call-overload]
    return claims


async def test_an_answer_asked_for_now_is_delivered_before_the_backlog_of_expired_cards(
        tmp_path: Path, database_url: str) -> None:
    settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=_config(tmp_path),  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground", BATON_APPROVAL_EXPIRY_SECONDS=3600)
    async with Baton(settings) as baton:
        for number in range(CARDS):
            await baton.accept_message(InboundMessage(
                platform=SLACK, channel=CHANNEL, thread=f"{number}.0", event_id=f"ask-{number}", user="alice",
                text=f"run deploy service=svc-{number}"))

        async def all_carded() -> bool:
            return await _count(baton, select(func.count()).select_from(Approval)) == CARDS
        await until(all_carded, "every card posted", timeout=120)
        async with baton.db.session() as session:  # the cards (and their threads' earlier lines) went out long ago
            await session.exec(text("UPDATE outbox SET status = 'sent', platform_message_id = 'ts-' || id"))

        baton.orchestrator.settings = settings.model_copy(update={"approval_expiry_seconds": 0.001})  # type: ignore[union-attr]
        # Baton's own expiry loop, which reads the same settings, may store some of the expiries first: the runs
        # ending is what tells they all expired (167 of 200 stored by this call on a loaded machine).
        await baton.orchestrator.expire_approvals()  # type: ignore[union-attr]

        async def all_expired() -> bool:
            return await _count(baton, select(func.count()).select_from(Run).where(Run.status == "failed")) == CARDS
        await until(all_expired, "every expired card's run ended", timeout=120)

        await baton.accept_message(InboundMessage(platform=SLACK, channel=CHANNEL, thread="fresh.0",
                                                  event_id="ask-now", user="carol", text="status"))

        async def answered() -> bool:
            return await _count(baton, select(func.count()).select_from(OutboxMessage).where(
                OutboxMessage.thread == "fresh.0")) > 0
        await until(answered, "carol's answer stored")
        if database_url.startswith("postgresql"):  # as autovacuum would have by now: without statistics of the
            async with baton.db.session() as session:  # backlog, each claim's plan walked all of it once a row
                await session.exec(text("ANALYZE outbox"))

        delivered = [delivery for claim in await _deliver_paced(Outbox(baton.db, worker="slack-loop"), baton.db)
                     for delivery in claim]
        unsent = await _count(baton, select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.status != "sent"))

    where = [(delivery.location.thread, delivery.kind) for delivery in delivered]
    fresh = [position for position, (thread, _kind) in enumerate(where) if thread == "fresh.0"]
    assert fresh == [0]  # first, not behind the 2 x CARDS expiry messages stored before it
    # Nothing of the housekeeping is lost: each card edited to say it expired, each thread told, in its order.
    edits = [thread for thread, kind in where if kind == "update"]
    notices = [thread for thread, kind in where if kind == "post" and thread != "fresh.0"]
    assert sorted(edits) == sorted(notices) == sorted(f"{number}.0" for number in range(CARDS))
    for thread in edits:
        assert where.index((thread, "update")) < where.index((thread, "post"))
    assert unsent == 0


OPS = [Location(platform=SLACK, workspace="", channel=CHANNEL, thread=f"{number}.0") for number in range(3)]
ELSEWHERE = Location(platform=SLACK, workspace="", channel="random", thread="9.0")


async def test_answers_go_before_the_housekeeping_of_their_channel_and_the_housekeeping_still_drains(
        database: Database) -> None:
    """A priority, not a reordering of threads: a thread's housekeeping ahead of an answer in it goes with the
    answers; the rest goes once the channel has nothing fresher; other channels are not held up by either."""
    outbox = Outbox(database, worker="me")
    async with database.session() as session:
        await outbox.enqueue(session, OPS[0], Message.text("card 0 expired"), kind="update", housekeeping=True)
        await outbox.enqueue(session, OPS[1], Message.text("card 1 expired"), kind="update", housekeeping=True)
        await outbox.enqueue(session, ELSEWHERE, Message.text("card 9 expired"), kind="update", housekeeping=True)
        await outbox.enqueue(session, OPS[2], Message.text("answer in 2"))
        await outbox.enqueue(session, OPS[0], Message.text("answer in 0"))  # behind its thread's housekeeping
    claims = await _deliver_paced(outbox, database)
    assert [[delivery.message.plain_text() for delivery in claim] for claim in claims] == [
        ["card 0 expired", "card 9 expired"], ["answer in 2"], ["answer in 0"], ["card 1 expired"]]


async def test_housekeeping_an_older_replica_left_ahead_of_an_answer_goes_in_its_threads_order(
        database: Database) -> None:
    """Baton of 0018 stores an answer behind its thread's housekeeping without making that housekeeping an answer
    (``Outbox.enqueue`` does): the thread then goes with the housekeeping, in its order, held up by nothing."""
    async with database.session() as session:
        await session.exec(insert(OutboxMessage.__table__), params=[  # type: ignore[attr-defined,call-overload]
            _row(OPS[0], Message.text("card 0 expired"), kind="update", housekeeping=True),
            _row(OPS[0], Message.text("answer in 0")), _row(OPS[1], Message.text("answer in 1"))])
    claims = await _deliver_paced(Outbox(database, worker="me"), database)
    assert [[delivery.message.plain_text() for delivery in claim] for claim in claims] == [
        ["answer in 1"], ["card 0 expired"], ["answer in 0"]]


async def test_housekeeping_is_never_handed_straight_to_the_adapter(database: Database) -> None:
    """Taken in its own transaction, a notice took its channel's free slot from an answer waiting in the queue."""
    outbox = Outbox(database, worker="me")
    outbox.attach(SLACK, 1.0)
    async with database.session() as session:
        notice = await outbox.enqueue_claimed(session, OPS[0], Message.text("expired"), housekeeping=True)
        answer = await outbox.enqueue_claimed(session, OPS[1], Message.text("answer"))
    assert notice is None and answer is not None  # the channel's slot went to the answer
    async with database.read() as session:
        rows = (await session.exec(select(OutboxMessage.housekeeping, OutboxMessage.status)  # type: ignore[call-overload]
                                   .order_by(OutboxMessage.id))).all()
    assert [tuple(row) for row in rows] == [(True, "pending"), (False, "sending")]


def test_a_claim_finds_a_channels_answers_and_its_housekeeping_by_index(sqlite_url: str) -> None:
    """A row's lane is stored, its thread's housekeeping made answers when an answer is stored behind it (by index,
    in the thread's unsent rows): each lane of a channel is a range of ix_outbox_unsent, walked in order to its first
    due row, never the housekeeping read to find the answers behind it."""
    upgrade(sqlite_url)
    with closing(sqlite3.connect(sqlite_path(sqlite_url))) as connection:
        for lane in LANES:
            due = _due_statement(20, lane).params(platform=SLACK, now=utcnow())
            sql = str(due.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
            plan = [detail for _id, _parent, _unused, detail in connection.execute(f"EXPLAIN QUERY PLAN {sql}")]
            assert any("USING INDEX ix_outbox_unsent (platform=? AND channel=? AND housekeeping=?)" in detail
                       for detail in plan), plan
            assert not any(detail.startswith("SCAN outbox") for detail in plan), plan
        thread = {"in_platform": SLACK, "in_channel": CHANNEL, "in_thread": "1.0"}
        promote = plan_for(_PROMOTE, thread)
        plan = [detail for _id, _parent, _unused, detail in connection.execute(
            f"EXPLAIN QUERY PLAN {promote.sql}", {**promote._static, **thread})]  # noqa: SLF001
    assert plan == ["SEARCH outbox USING INDEX ix_outbox_thread_status (platform=? AND channel=? AND thread=? AND "
                    "status=?)"], plan
