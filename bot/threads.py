"""Thread records and the one-writer-per-thread lease.

The lease is a row-level compare-and-set on ``thread_records`` (``lease_owner``/``lease_until``):
atomic under PostgreSQL's row locks and SQLite's write lock alike, so it holds across processes
and replicas, and a crashed holder's lease simply expires.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import bindparam, or_, update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.messages import Location
from storage.db import Database, insert_new_id
from storage.models import InboundEvent, ThreadRecord, utcnow

BUSY = ("running", "waiting")


# Hot statements, built once with bound parameters (building them cost more CPU than running them).
_FIND = select(ThreadRecord).where(
    ThreadRecord.platform == bindparam("platform"), ThreadRecord.workspace == bindparam("workspace"),
    ThreadRecord.channel == bindparam("channel"), ThreadRecord.thread == bindparam("thread"))
_PENDING = select(InboundEvent).where(InboundEvent.thread_record_id == bindparam("record_id"),
                                      InboundEvent.status == "pending")
_NEXT_CLICK = _PENDING.where(InboundEvent.kind == "click").order_by(InboundEvent.id).limit(1)  # type: ignore[arg-type]
_NEXT_ANY = _PENDING.order_by(InboundEvent.id).limit(1)  # type: ignore[arg-type]
_MINE = select(InboundEvent.id).where(InboundEvent.platform == bindparam("platform"),
                                      InboundEvent.event_id == bindparam("event_id"))
_EARLIER = select(InboundEvent.id).where(
    InboundEvent.thread_record_id == bindparam("record_id"), InboundEvent.status == "pending",
    InboundEvent.id < _MINE.scalar_subquery()).limit(1)  # type: ignore[operator]


async def find(session: AsyncSession, location: Location) -> ThreadRecord | None:
    return (await session.exec(_FIND, params=location.model_dump())).first()


async def create(session: AsyncSession, location: Location) -> tuple[ThreadRecord, bool]:
    """The thread's record, made now unless a concurrent writer made it first; and whether it is new."""
    now = utcnow()
    values = {**location.model_dump(), "lg_thread_id": ThreadRecord().lg_thread_id, "status": "idle",
              "created_at": now, "updated_at": now}
    new_id = await insert_new_id(session, ThreadRecord, values, ["platform", "workspace", "channel", "thread"])
    if new_id is not None:
        return ThreadRecord(id=new_id, **values), True
    record = await find(session, location)
    assert record is not None
    return record, False


def location_of(record: ThreadRecord) -> Location:
    return Location(platform=record.platform, workspace=record.workspace, channel=record.channel, thread=record.thread)


Work = tuple[InboundEvent, ThreadRecord]


class Leases:
    """Take a thread's lease together with its next event, and give it back when the queue is empty."""

    def __init__(self, db: Database, owner: str, seconds: float) -> None:
        self._db = db
        self.owner = owner
        self.seconds = seconds

    async def take(self, record_id: int) -> Work | None:
        """The lease and the next event, or ``None`` if another writer holds it or nothing waits."""
        now = utcnow()
        async with self._db.session() as session:
            taken = await session.exec(
                update(ThreadRecord)
                .where(
                    ThreadRecord.id == record_id,  # type: ignore[arg-type]
                    or_(ThreadRecord.lease_owner.is_(None), ThreadRecord.lease_until < now),  # type: ignore[union-attr]
                )
                .values(lease_owner=self.owner, lease_until=now + timedelta(seconds=self.seconds))
            )
            if not taken.rowcount:
                return None
            return await self._next_or_release(session, record_id)

    async def next_or_release(self, record_id: int) -> Work | None:
        """The next event while we hold the lease; with none left, release it in the same transaction.

        The record row is locked first, so a concurrent ``take`` waits for this transaction and
        then finds the lease free: an event queued meanwhile is never stranded.
        """
        async with self._db.session() as session:
            return await self._next_or_release(session, record_id)

    async def _next_or_release(self, session: AsyncSession, record_id: int) -> Work | None:
        record = (await session.exec(
            select(ThreadRecord).where(ThreadRecord.id == record_id).with_for_update()  # type: ignore[arg-type]
            .execution_options(populate_existing=True))).one()
        if record.lease_owner != self.owner:  # lost it while handling (see Orchestrator._mark_done)
            return None
        event = await next_event(session, record)
        if event is not None:
            return event, record
        await session.exec(
            update(ThreadRecord)
            .where(ThreadRecord.id == record_id, ThreadRecord.lease_owner == self.owner)  # type: ignore[arg-type]
            .values(lease_owner=None, lease_until=None)
        )
        return None

    async def renew(self, record_id: int) -> bool:
        async with self._db.session() as session:
            result = await session.exec(
                update(ThreadRecord)
                .where(ThreadRecord.id == record_id, ThreadRecord.lease_owner == self.owner)  # type: ignore[arg-type]
                .values(lease_until=utcnow() + timedelta(seconds=self.seconds))
            )
            return bool(result.rowcount)

    async def release(self, record_id: int) -> None:
        async with self._db.session() as session:
            await session.exec(
                update(ThreadRecord)
                .where(ThreadRecord.id == record_id, ThreadRecord.lease_owner == self.owner)  # type: ignore[arg-type]
                .values(lease_owner=None, lease_until=None)
            )


async def next_event(session: AsyncSession, record: ThreadRecord) -> InboundEvent | None:
    """The next queued event: clicks first (they unblock the thread), then messages in order.

    Messages wait while the thread waits for approval: they are handled after the run.
    """
    params = {"record_id": record.id}
    click = (await session.exec(_NEXT_CLICK, params=params)).first()
    if click is not None or record.status == "waiting":
        return click
    return (await session.exec(_NEXT_ANY, params=params)).first()


async def queued_before(session: AsyncSession, record: ThreadRecord, event_id: str) -> bool:
    """Whether an earlier event of this thread is still being handled (so ``event_id`` waits)."""
    params = {"record_id": record.id, "platform": record.platform, "event_id": event_id}
    return (await session.exec(_EARLIER, params=params)).first() is not None
