"""Clocks, second hunt: approval cards stamped and compared on the database's clock; a lease written before the
clock was set back."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import select

import storage.models
from bot.app import Baton
from bot.messages import InboundMessage
from bot.settings import Settings
from storage.models import Approval
from tests.support import until
from tests.test_graph_modules import _reply


class _Clock(datetime):
    """``storage.models.datetime``, whose ``now`` a test sets off (every ``utcnow()``: a replica whose clock is off)."""

    off = timedelta(0)

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
        return datetime.now(tz) + cls.off


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_Clock]]:
    monkeypatch.setattr(_Clock, "off", timedelta(0))
    monkeypatch.setattr(storage.models, "datetime", _Clock)
    yield _Clock


def _settings(url: str, config_path: Path, expiry: float) -> Settings:
    return Settings(BATON_DATABASE_URL=url, BATON_CONFIG=config_path, BATON_ADAPTERS="playground",  # type: ignore[call-arg]
                    BATON_APPROVAL_EXPIRY_SECONDS=expiry)


async def _ask_for_a_card(baton: Baton, thread: str) -> None:
    await baton.accept_message(InboundMessage(platform="playground", channel="ops", thread=thread, event_id=f"e{thread}",
                                              user="alice", text="run restart service=web", addressed=True))

    async def card() -> str | None:
        async with baton.db.read() as session:
            return (await session.exec(select(Approval.id).where(Approval.status == "pending"))).first()

    await until(card, "the approval card")


@pytest.mark.postgres
async def test_a_card_asked_through_a_replica_whose_clock_is_behind_does_not_expire_early(
        postgres_url: str, config_path: Path, clock: type[_Clock]) -> None:
    """Cards were stamped with the asking replica's clock and compared with the checking replica's: a card asked
    through a replica 10 minutes behind was 10 minutes old when posted, and a 5-minute expiry had it expire at once
    (a 15-minute one after 5). Cards are stamped and compared on the database's clock."""
    settings = _settings(postgres_url, config_path, 300)
    clock.off = -timedelta(minutes=10)
    async with Baton(settings) as behind:  # its clock is behind from the start: it reads the database's then
        await _ask_for_a_card(behind, "1")
    clock.off = timedelta(0)
    async with Baton(settings) as accurate:
        assert await accurate.orchestrator.expire_approvals() == 0, "a card expired at once"


async def test_a_card_stamped_before_the_clock_was_set_back_shows_no_more_than_the_expiry_left(
        tmp_path: Path, config_path: Path) -> None:
    """A card stamped while the clock was 2 days ahead (then set back) read 'expires in 2d 1h' in status with a
    1-hour expiry: it counts as asked now."""
    async with Baton(_settings(f"sqlite:///{tmp_path / 'c.db'}", config_path, 3600)) as baton:
        await _ask_for_a_card(baton, "1")
        async with baton.db.session() as session:
            await session.exec(update(Approval).values(created_at=datetime.now(UTC) + timedelta(days=2)))  # type: ignore[call-overload]
        await baton.accept_message(InboundMessage(platform="playground", channel="ops", thread="2", event_id="e2",
                                                  user="bob", text="status", addressed=True))
        reply = await _reply(baton, "2")
    assert ", expires in 1h: Run `restart`" in reply, reply
