"""`status` of a card whose expiry has passed but that the expiry check (every 30 s at most) has not handled yet
said "expires in 0ms"."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlmodel import select

from bot.app import Baton
from bot.messages import InboundMessage
from bot.settings import Settings
from storage.models import Approval, utcnow
from tests.support import until
from tests.test_graph_modules import _reply


async def test_status_of_a_card_past_its_expiry_says_it_expires_now(tmp_path, config_path) -> None:
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 's.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground", BATON_APPROVAL_EXPIRY_SECONDS=3600)
    async with Baton(settings) as baton:
        await baton.accept_message(InboundMessage(platform="playground", channel="ops", thread="1", event_id="e1",
                                                  user="alice", text="run restart service=web", addressed=True))

        async def waiting() -> Approval | None:
            async with baton.db.read() as session:
                return await session.get(Approval, (await _pending_id(baton)) or "")

        await until(waiting, "the card")
        async with baton.db.session() as session:  # asked an hour and a minute ago; the check has not come yet
            await session.exec(update(Approval).values(created_at=utcnow() - timedelta(seconds=3660)))  # type: ignore[call-overload]
        await baton.accept_message(InboundMessage(platform="playground", channel="ops", thread="2", event_id="e2",
                                                  user="bob", text="status", addressed=True))
        reply = await _reply(baton, "2")
    assert ", expires now: Run `restart`" in reply, reply
    assert "expires in" not in reply


async def _pending_id(baton: Baton) -> str | None:
    async with baton.db.read() as session:
        return (await session.exec(select(Approval.id).where(Approval.status == "pending"))).first()
