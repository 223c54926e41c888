"""The outbox: every bot message is stored first, then delivered by its platform's adapter.

Delivery keeps order per thread (a row waits until every earlier row of its thread is sent),
paces per channel when the platform asks for it, and survives crashes: a claim is a lease that
another replica takes over when it expires.
"""

from __future__ import annotations

import asyncio
import functools
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import DateTime, and_, bindparam, exists, or_, update
from sqlalchemy.orm import aliased
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.messages import Location, Message
from storage.db import Database, insert_ignore
from storage.models import ChannelPace, OutboxMessage, utcnow

CLAIM_SECONDS = 30.0  # a sender that died mid-send leaves its rows to others after this

# The claim's statements are built once, with bound parameters: building them (and their cache
# keys) on every poll cost more CPU than running them.
_NOW = bindparam("now", type_=DateTime())
_CLAIMABLE = or_(
    and_(OutboxMessage.status == "pending", OutboxMessage.next_attempt_at <= _NOW),
    and_(OutboxMessage.status == "sending", OutboxMessage.claimed_until < _NOW),  # a crashed sender's claim
)
_TAKE = (update(OutboxMessage)
         .where(OutboxMessage.id == bindparam("row_id"), _CLAIMABLE)  # type: ignore[arg-type]
         .values(status="sending", claimed_by=bindparam("worker"), claimed_until=bindparam("until", type_=DateTime()),
                 attempts=OutboxMessage.attempts + 1)
         .execution_options(synchronize_session=False))


@functools.cache
def _due_statement(limit: int) -> Any:
    """The first claimable row of each thread (a row waits for every earlier row of its thread)."""
    earlier = aliased(OutboxMessage)
    blocked_by_earlier = exists().where(
        earlier.platform == OutboxMessage.platform,
        earlier.channel == OutboxMessage.channel,
        earlier.thread == OutboxMessage.thread,
        earlier.id < OutboxMessage.id,
        earlier.status.in_(("pending", "sending")),  # type: ignore[attr-defined]
    )
    return (select(OutboxMessage).where(OutboxMessage.platform == bindparam("platform"), _CLAIMABLE, ~blocked_by_earlier)
            .order_by(OutboxMessage.id).limit(limit))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Delivery:
    """One claimed outbox row, ready for an adapter to send."""

    id: int
    kind: str  # post | update | ephemeral
    location: Location
    message: Message
    target_user: str | None
    target_message_id: str | None  # for ``update``: the platform id of the message to edit
    attempts: int


class Outbox:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._wake: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    @staticmethod
    def enqueue(
        session: AsyncSession,
        location: Location,
        message: Message,
        *,
        kind: str = "post",
        target_user: str | None = None,
        ref_outbox_id: int | None = None,
        correlation_id: str | None = None,
    ) -> OutboxMessage:
        """Add a message to the caller's transaction; call ``wake`` after it commits."""
        row = OutboxMessage(
            platform=location.platform,
            workspace=location.workspace,
            channel=location.channel,
            thread=location.thread,
            kind=kind,
            target_user=target_user,
            ref_outbox_id=ref_outbox_id,
            payload=message.model_dump(),
            correlation_id=correlation_id,
        )
        session.add(row)
        return row

    def wake(self, platform: str) -> None:
        self._wake[platform].set()

    async def wait(self, platform: str, timeout: float) -> None:
        event = self._wake[platform]
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        event.clear()

    async def claim(self, platform: str, worker: str, *, limit: int = 20, pace_seconds: float = 0.0) -> list[Delivery]:
        now = utcnow()
        due, due_params = _due_statement(limit), {"platform": platform, "now": now}
        async with self._db.read() as session:  # idle polling never takes the write lock
            if (await session.exec(due, params=due_params)).first() is None:
                return []
        deliveries: list[Delivery] = []
        async with self._db.session() as session:
            rows = (await session.exec(due, params=due_params)).all()
            paced: set[str] = set()
            for row in rows:
                if pace_seconds > 0:
                    if row.channel in paced or not await self._take_channel_slot(session, row, pace_seconds):
                        paced.add(row.channel)
                        continue
                    paced.add(row.channel)
                taken = await session.exec(_TAKE, params={  # type: ignore[call-overload]
                    "row_id": row.id, "now": now, "worker": worker, "until": now + timedelta(seconds=CLAIM_SECONDS)})
                if not taken.rowcount:
                    continue
                target = None
                if row.ref_outbox_id is not None:
                    ref = await session.get(OutboxMessage, row.ref_outbox_id)
                    target = ref.platform_message_id if ref else None
                deliveries.append(
                    Delivery(
                        id=row.id,  # type: ignore[arg-type]
                        kind=row.kind,
                        location=Location(platform=row.platform, workspace=row.workspace, channel=row.channel, thread=row.thread or ""),
                        message=Message.model_validate(row.payload),
                        target_user=row.target_user,
                        target_message_id=target,
                        attempts=row.attempts + 1,
                    )
                )
        return deliveries

    async def _take_channel_slot(self, session: AsyncSession, row: OutboxMessage, pace_seconds: float) -> bool:
        now = utcnow()
        await insert_ignore(session, ChannelPace, {"platform": row.platform, "channel": row.channel, "next_at": now},
                            ["platform", "channel"])
        result = await session.exec(
            update(ChannelPace)
            .where(ChannelPace.platform == row.platform, ChannelPace.channel == row.channel, ChannelPace.next_at <= now)  # type: ignore[arg-type]
            .values(next_at=now + timedelta(seconds=pace_seconds))
        )
        return bool(result.rowcount)

    async def delivered(self, delivery_id: int, platform_message_id: str | None) -> None:
        async with self._db.session() as session:
            await session.exec(
                update(OutboxMessage)
                .where(OutboxMessage.id == delivery_id)  # type: ignore[arg-type]
                .values(status="sent", platform_message_id=platform_message_id, sent_at=utcnow(), claimed_until=None, error=None)
            )

    async def retry(self, delivery_id: int, after_seconds: float, error: str) -> None:
        async with self._db.session() as session:
            await session.exec(
                update(OutboxMessage)
                .where(OutboxMessage.id == delivery_id)  # type: ignore[arg-type]
                .values(status="pending", next_attempt_at=utcnow() + timedelta(seconds=after_seconds), claimed_until=None,
                        error=error[:500])
            )

    async def failed(self, delivery_id: int, error: str) -> None:
        async with self._db.session() as session:
            await session.exec(
                update(OutboxMessage)
                .where(OutboxMessage.id == delivery_id)  # type: ignore[arg-type]
                .values(status="failed", claimed_until=None, error=error[:500])
            )
