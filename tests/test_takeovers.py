"""Runs taken up again after Baton stopped: not for ever, and not when their graph is gone."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlmodel import select

from bot.app import Baton
from bot.kit import approve
from bot.messages import InboundClick, InboundMessage
from bot.orchestrator import MAX_TAKEOVERS
from bot.registry import GraphSpec
from bot.settings import Settings
from storage.models import Approval, InboundEvent, Run, ThreadRecord, utcnow
from tests.test_graph_modules import State, _one_node
from tests.test_recovery import _Stopped, _until_replies


def _settings(tmp_path, config_path) -> Settings:
    return Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 't.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                    BATON_ADAPTERS="playground")


async def _settled(baton: Baton) -> None:
    """Until the drains started so far have ended (a stopped one with ``_Stopped``)."""
    while tasks := list(baton.orchestrator._tasks):
        for task in tasks:
            try:
                await task
            except _Stopped:
                pass


async def _stops_baton(*_args: object, **_kwargs: object) -> None:
    raise _Stopped()


async def _taken_up_again(baton: Baton, event_id: str) -> None:
    """Baton is back after a stop: its sweeper takes the event, still pending, again."""
    async with baton.db.session() as session:  # as if it had waited past the sweeper's delay
        await session.exec(update(InboundEvent).where(InboundEvent.event_id == event_id)  # type: ignore[call-overload]
                           .values(received_at=utcnow() - timedelta(minutes=1)))
    assert await baton.orchestrator.sweep() == 1
    await _settled(baton)


async def _outcome(baton: Baton) -> tuple[list[tuple[str, int]], list[str]]:
    async with baton.db.read() as session:
        runs = [(run.status, run.takeovers) for run in (await session.exec(select(Run))).all()]
        records = [record.status for record in (await session.exec(select(ThreadRecord))).all()]
    return runs, records


async def _asked_and_stopped(baton: Baton, text: str) -> None:
    """``text`` asked in thread 1; Baton stops while its run is under way (the event stays pending)."""
    graph_run = baton.runtime.run
    baton.runtime.run = _stops_baton  # type: ignore[method-assign]
    await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                              event_id="e1", user="alice", text=text, addressed=True))
    await _settled(baton)
    baton.runtime.run = graph_run  # type: ignore[method-assign]


async def test_a_run_that_stops_baton_each_time_is_failed_not_taken_up_for_ever(tmp_path, config_path) -> None:
    """A node that stops the process (os._exit, the memory it takes) stopped every start of every replica for
    good: the run was taken up again at each start."""
    async with Baton(_settings(tmp_path, config_path)) as baton:
        await _asked_and_stopped(baton, "run slow seconds=0")
        graph_run = baton.runtime.run
        baton.runtime.run = _stops_baton  # type: ignore[method-assign]
        for _ in range(MAX_TAKEOVERS):
            await _taken_up_again(baton, "e1")
        baton.runtime.run = graph_run  # type: ignore[method-assign]
        assert await _outcome(baton) == ([("running", MAX_TAKEOVERS)], ["running"])
        await _taken_up_again(baton, "e1")
        reply = (await _until_replies(baton, "1", 1))[-1]
        assert await _outcome(baton) == ([("failed", MAX_TAKEOVERS + 1)], ["failed"])
    assert f"Baton stopped {MAX_TAKEOVERS + 1} times while this `run slow` run was under way" in reply, reply


async def test_a_run_taken_up_again_a_few_times_still_finishes(tmp_path, config_path) -> None:
    async with Baton(_settings(tmp_path, config_path)) as baton:
        await _asked_and_stopped(baton, "run slow seconds=0")
        await _taken_up_again(baton, "e1")
        assert "slept" in (await _until_replies(baton, "1", 1))[-1]
        assert await _outcome(baton) == ([("done", 1)], ["done"])


async def test_a_run_whose_graph_is_gone_after_a_stop_fails_instead_of_running_for_good(tmp_path, config_path) -> None:
    """Taken up again with its graph removed meanwhile, the run and its thread stayed "running" for good."""
    async with Baton(_settings(tmp_path, config_path)) as baton:
        baton.registry.add(GraphSpec(name="gone", graph=_one_node(lambda _state: {"reply": "done"})))
        await _asked_and_stopped(baton, "gone")
        del baton.registry._specs["gone"]
        await _taken_up_again(baton, "e1")
        reply = (await _until_replies(baton, "1", 1))[-1]
        assert await _outcome(baton) == ([("failed", 0)], ["failed"])
    assert "the `gone` graph is not installed on this Baton any more" in reply, reply


async def test_a_click_on_the_card_of_a_graph_that_is_gone_fails_the_run_and_expires_the_card(
        tmp_path, config_path) -> None:
    """The click answered "I can't find the run behind this approval any more" (to the clicker only), and the
    thread stayed waiting, and listed by status, for good."""
    def ask(_state: State) -> State:
        return {"reply": "approved" if approve("Go?").approved else "rejected"}

    async with Baton(_settings(tmp_path, config_path)) as baton:
        baton.registry.add(GraphSpec(name="asker", graph=_one_node(ask)))
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="asker", addressed=True))
        await _until_replies(baton, "1", 1)
        async with baton.db.read() as session:
            card = (await session.exec(select(Approval))).one()
        del baton.registry._specs["asker"]
        await baton.accept_click(InboundClick(platform="playground", channel="general", thread="1", event_id="c1",
                                              user="bob", approval_id=card.id, action="approve"))
        replies = await _until_replies(baton, "1", 2)
        async with baton.db.read() as session:
            card = (await session.exec(select(Approval))).one()
        assert await _outcome(baton) == ([("failed", 0)], ["failed"])
    assert card.status == "stale"
    assert "Expired by Baton" in replies[0], replies
    assert "the `asker` graph is not installed on this Baton any more" in replies[-1], replies
