"""A message edited to add the mention its writer forgot, while the message still waits in a busy thread (behind a
running run, at a card, which may wait a day): the edit was taken for a duplicate, since only a message passed over
as people talking could be one, and the message was then passed over: the request was lost. The edit is kept, and
once the drain has taken the message it is a request, unless the message was a request by itself (it ran: the edit
is nothing new). Slack and Discord alike: both hand the core ``InboundMessage.mention_added``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langgraph.graph import END, START, StateGraph
from sqlmodel import select

from bot.app import Baton
from bot.messages import InboundMessage
from bot.registry import GraphSpec
from storage.models import InboundEvent, OutboxMessage
from tests.support import runs_in, until
from tests.test_cancel import config_path  # noqa: F401 (a fixture: baton.yaml with the sleepy runbook)
from tests.test_waiting_thread import _playground, _say


def _deploy() -> GraphSpec:
    def deploy(state: dict[str, Any]) -> dict[str, Any]:
        return {"reply": "deploy graph ran"}

    builder = StateGraph(dict)  # type: ignore[type-var]
    builder.add_node("deploy", deploy)
    builder.add_edge(START, "deploy")
    builder.add_edge("deploy", END)
    return GraphSpec(name="deploy", graph=builder, description="Deploys.", dedupe=False)


async def _message(baton: Baton, event_id: str, text: str, user: str, *, addressed: bool,
                   mention_added: bool = False) -> str:
    accepted = await baton.accept_message(InboundMessage(
        platform="playground", channel="general", thread="t1", event_id=event_id, user=user, text=text,
        addressed=addressed, mention_added=mention_added))
    return accepted.status


async def _events(baton: Baton) -> dict[str, tuple[str, str | None]]:
    async with baton.db.read() as session:
        return {e.event_id: (e.status, e.outcome) for e in (await session.exec(select(InboundEvent))).all()}


async def _replies(baton: Baton, contains: str) -> int:
    async with baton.db.read() as session:
        return sum(contains in str(row.payload) for row in (await session.exec(select(OutboxMessage).where(
            OutboxMessage.thread == "t1"))).all())


async def test_a_mention_added_to_a_message_queued_behind_a_run_makes_it_a_request_after_the_run(
        sqlite_url: str, config_path: Path, tmp_path: Path) -> None:  # noqa: F811
    async with Baton(_playground(sqlite_url, config_path)) as baton:
        baton.registry.add(_deploy())
        await _say(baton, "e1", "run sleepy", "alice")
        await until(lambda: (tmp_path / "sleepy.pid").exists(), "the command to start")
        # "deploy web now" without the mention, in a Baton thread: people talking; bob adds the mention
        assert await _message(baton, "e2", "deploy web now", "bob", addressed=False) == "accepted"
        assert await _message(baton, "e2", "deploy web now", "bob", addressed=True, mention_added=True) == "accepted"
        assert await _message(baton, "e2", "deploy web now!", "bob", addressed=True, mention_added=True) == "duplicate"
        await _say(baton, "e3", "cancel", "alice")  # the run ends: the queue goes on
        await until(lambda: _replies(baton, "deploy graph ran"), "the edited request to run")
        await until(lambda: not baton.orchestrator._draining, "the queue drained")  # type: ignore[union-attr]
        events = await _events(baton)
        assert events["e2"] == ("done", "conversation")  # the message itself, as written: no answer
        assert events["e2:mention-added"] == ("done", "done")  # the deploy run, done
        assert await _replies(baton, "deploy graph ran") == 1


async def test_a_mention_added_to_a_queued_message_that_was_a_request_by_itself_runs_nothing_again(
        sqlite_url: str, config_path: Path, tmp_path: Path, counter: Path) -> None:  # noqa: F811
    """``run uptime`` written without the mention behind a run is a request by itself, told "Queued: ..." once. Its
    writer adding the mention was told "Queued: ..." again, for an edit stored to be passed over as nothing new
    (which a replica of the code before it, in a rolling upgrade, would have run a second time)."""
    async with Baton(_playground(sqlite_url, config_path)) as baton:
        await _say(baton, "e1", "run sleepy", "alice")
        await until(lambda: (tmp_path / "sleepy.pid").exists(), "the command to start")
        # "run uptime" is a request in a Baton thread without the mention; its writer adds it anyway
        assert await _message(baton, "e2", "run uptime", "bob", addressed=False) == "accepted"
        assert await _message(baton, "e2", "run uptime", "bob", addressed=True, mention_added=True) == "duplicate"
        await _say(baton, "e3", "cancel", "alice")
        await until(lambda: _events_done(baton, "e2"), "the message to be handled")
        events = await _events(baton)
        assert events["e2"] == ("done", "done")  # run as written
        assert "e2:mention-added" not in events  # no event of its own, for an older replica to run again
        assert runs_in(counter) == ["uptime"]
        assert await _replies(baton, "Queued: ") == 1  # for the message; its edit adds no request, nor a word


async def _events_done(baton: Baton, event_id: str) -> bool:
    return (await _events(baton)).get(event_id, ("pending", None))[0] == "done"
