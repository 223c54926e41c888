"""Cards nobody decides on expire (BATON_APPROVAL_EXPIRY_SECONDS): nothing runs, the thread is told."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlmodel import select, update

from bot.app import Baton
from bot.messages import InboundMessage
from bot.orchestrator import _OVERDUE_APPROVALS
from bot.settings import Settings
from storage.models import Approval, AuditEntry, InboundEvent, PlaygroundMessage, Run, utcnow
from tests.fake_models import script
from tests.support import has_buttons, runs_in, until, wait_for


def test_a_card_nobody_decides_on_expires_and_nothing_runs(start_baton, database_url, counter) -> None:
    baton = start_baton(database_url, env={"BATON_APPROVAL_EXPIRY_SECONDS": "2"})
    pg = baton.client()
    thread = pg.ask("@baton run restart service=web")
    card = pg.wait_card(thread)
    reply = pg.wait_reply(thread, "so it expired and nothing more of this run was done")
    assert reply["content"]["tone"] == "warning" and "within 2.0s" in reply["text"]
    edited = wait_for(lambda: next((m for m in pg.bot_replies(thread) if m["id"] == card["id"] and not has_buttons(m)),
                                   None), 20, "the card without its buttons")
    assert "Expired by Baton" in edited["text"]

    assert pg.click(card, "bob").status_code == 400  # its buttons are gone
    pg.wait_reply(pg.ask("@baton status", user="carol"), "Nothing is running or waiting for approval")

    again = pg.ask("@baton run restart service=web", user="carol")  # asked again: a new card, not a link
    pg.click(pg.wait_card(again), "bob")
    pg.wait_reply(again, "did restart web")
    assert runs_in(counter) == ["restart web"]


def test_a_card_decided_in_time_does_not_expire(start_baton, database_url, counter) -> None:
    baton = start_baton(database_url, env={"BATON_APPROVAL_EXPIRY_SECONDS": "3"})
    pg = baton.client()
    thread = pg.ask("@baton run restart service=api")
    pg.click(pg.wait_card(thread), "bob")
    pg.wait_reply(thread, "did restart api")
    expired_elsewhere = pg.ask("@baton run restart service=worker")  # expires meanwhile: the sweep has run
    pg.wait_reply(expired_elsewhere, "so it expired")
    assert not any("expired" in m["text"] for m in pg.bot_replies(thread))
    assert runs_in(counter) == ["restart api"]


async def test_two_replicas_store_one_expiry_per_card(tmp_path: Path, database_url: str, config_path: Path) -> None:
    settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground", BATON_APPROVAL_EXPIRY_SECONDS=3600)
    async with Baton(settings) as one, Baton(settings) as two:
        await one.accept_message(InboundMessage(platform="playground", channel="general", thread="1", event_id="e1",
                                                user="alice", text="run restart service=web"))

        await until(lambda: _asked_for_approval(one), "the approval card")
        for baton in (one, two):  # an hour later, as both replicas see it
            baton.orchestrator.settings = settings.model_copy(update={"approval_expiry_seconds": 0.001})  # type: ignore[union-attr]
        stored = await asyncio.gather(*(baton.orchestrator.expire_approvals() for baton in (one, two)))  # type: ignore[union-attr]
        assert sorted(stored) == [0, 1]

        async def ended() -> bool:
            async with one.db.read() as session:
                return (await session.exec(select(Run.status))).all() == ["failed"]
        await until(ended, "the run failed")
        async with one.db.read() as session:
            expiries = (await session.exec(select(InboundEvent).where(InboundEvent.user == "Baton"))).all()
            approval = (await session.exec(select(Approval))).one()
            audited = (await session.exec(select(AuditEntry.kind).where(AuditEntry.approval_id == approval.id))).all()
        assert [event.status for event in expiries] == ["done"] and approval.status == "stale"
        assert audited[-1] == "approval.expired"


async def _asked_for_approval(baton: Baton) -> bool:
    async with baton.db.read() as session:
        return (await session.exec(select(Approval))).first() is not None


async def test_a_card_whose_run_ended_without_it_leaves_the_waiting_cards_when_it_expires(
        tmp_path: Path, database_url: str, config_path: Path) -> None:
    """Its expiry event was handled ("expired already") and the card stayed pending: every later pass picked it
    again (its expiry stored already: nothing to do), and enough of them took the whole batch's room, so the
    cards behind them never expired."""
    settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground", BATON_APPROVAL_EXPIRY_SECONDS=3600)
    async with Baton(settings) as baton:
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1", event_id="e1",
                                                  user="alice", text="run restart service=web"))

        await until(lambda: _asked_for_approval(baton), "the approval card")
        async with baton.db.session() as session:  # the run ended some other way, its card left waiting
            await session.exec(update(Run).values(status="done"))  # type: ignore[call-overload]
        baton.orchestrator.settings = settings.model_copy(update={"approval_expiry_seconds": 0.001})  # type: ignore[union-attr]
        assert await baton.orchestrator.expire_approvals() == 1  # type: ignore[union-attr]

        async def expired() -> bool:
            async with baton.db.read() as session:
                return (await session.exec(select(Approval.status))).all() == ["stale"]
        await until(expired, "the card expired")
        overdue = await baton.db.fetch(_OVERDUE_APPROVALS, {"asked_before": utcnow()})
        assert overdue.all() == [] and await baton.orchestrator.expire_approvals() == 0  # type: ignore[union-attr]
        async with baton.db.read() as session:
            assert (await session.exec(select(InboundEvent.outcome).where(InboundEvent.user == "Baton"))).all() == [
                "expired"]


async def test_a_which_one_card_nobody_picks_from_expires_as_what_it_was(
        tmp_path: Path, config_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """An expired "Which one?" card was redrawn as an approval card: "Expired", Baton's internals in a code
    block (options: [...]) and "Requested by alice · risk low · approvers: alice"."""
    script_path = tmp_path / "script.json"
    monkeypatch.setenv("BATON_TEST_MODEL_SCRIPT", str(script_path))
    script(script_path, [{"tool_calls": [{"name": "GraphGuess", "id": "g1", "args": {
        "graph": "status", "confidence": 0.4, "alternatives": ["help"]}}]}])
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground", BATON_MODEL="python:tests.fake_models:scripted",
                        BATON_APPROVAL_EXPIRY_SECONDS=1)
    async with Baton(settings) as baton:
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="hmm, the thing?", addressed=True))

        async def texts() -> list[str]:
            async with baton.db.read() as session:
                return list((await session.exec(select(PlaygroundMessage.text).where(
                    PlaygroundMessage.thread_id == "1", PlaygroundMessage.is_bot).order_by(PlaygroundMessage.id))).all())

        async def expired() -> bool:
            shown = await texts()
            return any("Nobody picked one of the choices" in text for text in shown) and any(
                "Expired by Baton" in text for text in shown)
        await until(expired, "the card expired")
        card = next(text for text in await texts() if "Expired by Baton" in text)
        assert "Which" in card or "which" in card
        assert "options" not in card and "Requested by" not in card and "chose" not in card
