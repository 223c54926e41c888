"""A click on a button Baton does not know (another Baton's, or one whose approval was removed)."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import select

from bot.app import Baton
from bot.messages import InboundClick
from bot.settings import Settings
from storage.models import InboundEvent, OutboxMessage


async def test_a_click_on_an_unknown_approval_is_closed_at_once_with_a_note_to_the_clicker(
        tmp_path: Path, config_path: Path) -> None:
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        click = InboundClick(platform="playground", channel="general", thread="1", event_id="c1", user="bob",
                             approval_id="no-such-approval", action="approve")
        assert (await baton.accept_click(click)).status == "accepted"
        assert (await baton.accept_click(click)).status == "duplicate"  # the same click delivered again
        async with baton.db.read() as session:
            event = (await session.exec(select(InboundEvent).where(InboundEvent.event_id == "c1"))).one()
            notes = (await session.exec(select(OutboxMessage))).all()
        assert (event.status, event.outcome, event.thread_record_id) == ("done", "unknown approval", None)
        assert [(note.kind, note.target_user) for note in notes] == [("ephemeral", "bob")]
        assert "don't know that approval" in notes[0].payload["parts"][0]["text"]
