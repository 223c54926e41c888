"""Two Batons on one PostgreSQL database under a team's mixed load, all at once: new requests, follow-ups
in busy threads, chatter, events and clicks delivered to both replicas, a crowd of clicks on one card, cards
left to expire, ``status`` and ``digest now``. Whatever the interleaving, each event is handled once, each
side effect runs at most once (and only when approved), nothing deadlocks, no thread is left stuck, and each
thread's messages arrive in the order Baton stored them."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlmodel import select

from bot.app import Baton
from bot.messages import InboundClick, InboundMessage
from bot.settings import Settings
from storage.models import Approval, InboundEvent, OutboxMessage, PlaygroundMessage, Run, ThreadRecord
from tests.support import runs_in, until

pytestmark = pytest.mark.postgres
T = TypeVar("T")

CHANNELS = ("general", "ops", "random")
SERVICES = ("web", "api", "worker")
EXPIRY_SECONDS = 3  # replica one's: a card nobody decides on expires; the others are clicked at once
# What each restart thread's card gets: "crowd" ten clicks at once (bob's approval among people who may not),
# "both" bob's one click delivered to both replicas, "reject" the requester withdraws it (to both replicas),
# "outsiders" only clicks that must be refused (so it expires), "expire" none at all.
ROUNDS = 8  # bursts of people typing per thread
TWINS = (12, 15, 18)  # threads in #general that ask for thread 0's restart at the same moment (one card, links)
PLANS = ("crowd", "both", "reject", "expire", "crowd", "outsiders")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _message(thread: int, text: str, user: str = "carol", addressed: bool = True,
             event_id: str | None = None) -> InboundMessage:
    return InboundMessage(platform="playground", channel=CHANNELS[thread % len(CHANNELS)], thread=f"t{thread}",
                          event_id=event_id or uuid.uuid4().hex, user=user, text=text, addressed=addressed)


def _click(thread: int, approval_id: str, user: str, action: str = "approve") -> InboundClick:
    return InboundClick(platform="playground", channel=CHANNELS[thread % len(CHANNELS)], thread=f"t{thread}",
                        event_id=uuid.uuid4().hex, user=user, approval_id=approval_id, action=action)


async def _stress(one: Baton, two: Baton, seed: int) -> dict[str, Any]:
    """Drive the load; what was asked of whom, for the checks."""
    rng = random.Random(seed)
    replicas = (one, two)
    asked: dict[str, Any] = {"uptime_events": set(), "plans": {}}

    async def to_both(send: Callable[[Baton], Awaitable[Any]]) -> list[str]:
        answers = await asyncio.gather(*(send(baton) for baton in replicas))
        return sorted(answer.status for answer in answers)

    async def request(thread: int, text: str, user: str = "carol") -> None:
        message = _message(thread, text, user)
        if "uptime" in text:
            asked["uptime_events"].add(message.event_id)
        assert await to_both(lambda baton: baton.accept_message(message)) == ["accepted", "duplicate"]

    async def follow_ups(thread: int) -> None:
        """People typing in the thread while it is busy, a few at once on either replica: requests without a
        mention, chatter, messages with nothing to read (answered at once), one redelivered to both."""
        for n in range(ROUNDS):
            burst = [_message(thread, "can someone approve this?", user="dave", addressed=False),
                     _message(thread, "\u200b", user="dave"), _message(thread, "\u200b", user="carol"),
                     _message(thread, "help" if n % 2 else "\u200b", user="alice", addressed=n % 3 == 0)]
            if n in (1, ROUNDS - 1):
                burst.append(_message(thread, "run uptime force", user="carol", addressed=n == 1))
                asked["uptime_events"].add(burst[-1].event_id)
            await asyncio.gather(*(rng.choice(replicas).accept_message(message) for message in burst))
            if n == ROUNDS // 2:
                await request(thread, "run uptime force")

    async def card(thread: int) -> Approval | None:
        """The thread's card; ``None`` when its request was the same as one asked at once elsewhere (a link)."""
        async def asked() -> Approval | str | None:
            async with one.db.read() as session:
                found = (await session.exec(select(Approval).join(
                    ThreadRecord, ThreadRecord.id == Approval.thread_record_id).where(  # type: ignore[arg-type]
                    ThreadRecord.thread == f"t{thread}"))).first()
                linked = (await session.exec(select(InboundEvent.id).where(
                    InboundEvent.thread == f"t{thread}", InboundEvent.outcome == "duplicate request"))).first()
            return found or ("linked" if linked else None)
        # A bound, not a timing: alone a card comes within seconds; in a fresh clone's suite on a slow evening
        # (23 min) t5's took over 40 s, behind the other threads' runs on two loaded cores.
        found = await until(asked, f"the approval card of t{thread}", 120)
        return found if isinstance(found, Approval) else None

    async def decide(thread: int, plan: str) -> None:
        approval = await card(thread)
        if approval is None:
            return
        asked["plans"][approval.id] = plan
        clicks: list[Awaitable[Any]] = []
        if plan == "crowd":  # ten at once: only bob's approvals count (the others may not decide this card)
            people = [("mallory", "approve"), ("carol", "approve"), ("dave", "reject"), ("bob", "approve"),
                      ("bob", "approve"), ("mallory", "reject"), ("bob", "approve"), ("dave", "approve"),
                      ("bob", "approve"), ("mallory", "approve")]
            clicks = [rng.choice(replicas).accept_click(_click(thread, approval.id, user, action))
                      for user, action in people]
            await asyncio.gather(*clicks)
        elif plan in ("both", "reject"):
            click = _click(thread, approval.id, "bob" if plan == "both" else "carol",
                           "approve" if plan == "both" else "reject")
            assert await to_both(lambda baton: baton.accept_click(click)) == ["accepted", "duplicate"]
            again = click.model_copy()  # the platform retries it a moment later
            assert await to_both(lambda baton: baton.accept_click(again)) == ["duplicate", "duplicate"]
        elif plan == "outsiders":
            await asyncio.gather(*(rng.choice(replicas).accept_click(_click(thread, approval.id, user))
                                   for user in ("mallory", "dave", "carol")))

    async def restart_thread(thread: int) -> None:
        service = SERVICES[thread // len(CHANNELS)]  # one (channel, service) per thread: no "same request" links
        await request(thread, f"run restart service={service}")
        await asyncio.gather(follow_ups(thread), decide(thread, PLANS[thread]))

    async def twin_thread(thread: int) -> None:
        """Thread 0's request (restart web in #general), asked at the same moment in another thread."""
        message = _message(thread, "run restart service=web", user="erin")
        assert await to_both(lambda baton: baton.accept_message(message)) == ["accepted", "duplicate"]
        await asyncio.gather(follow_ups(thread), decide(thread, "crowd"))

    async def uptime_thread(thread: int) -> None:
        await request(thread, "run uptime force")
        await follow_ups(thread)

    async def status_thread(thread: int) -> None:
        await request(thread, "status", user="alice")
        await asyncio.gather(request(thread, "digest now", user="alice"), follow_ups(thread))
        await request(thread, "status", user="bob")

    await asyncio.gather(*(restart_thread(t) for t in range(len(PLANS))),
                         *(uptime_thread(t) for t in range(len(PLANS), 9)), status_thread(9),
                         *(twin_thread(t) for t in TWINS))
    return asked


async def _left(baton: Baton) -> dict[str, list[Any]]:
    """What is not settled yet: events not handled, messages not sent, cards not decided, threads running."""
    async with baton.db.read() as session:
        left = {
            "events": (await session.exec(select(InboundEvent.id, InboundEvent.kind, InboundEvent.status).where(
                InboundEvent.status != "done"))).all(),
            "messages": (await session.exec(select(OutboxMessage.id, OutboxMessage.status).where(
                OutboxMessage.status != "sent"))).all(),
            "cards": (await session.exec(select(Approval.id).where(Approval.status == "pending"))).all(),
            "running": (await session.exec(select(ThreadRecord.thread).where(
                ThreadRecord.status.in_(("running",))))).all(),  # type: ignore[attr-defined]
        }
    return {what: list(rows[:10]) for what, rows in left.items() if rows}


def _from_another_test(record: logging.LogRecord) -> bool:
    """asyncio's "Task exception was never retrieved" for a task an earlier test in this process left behind
    (it is logged whenever the task is collected): its traceback runs through that test's module."""
    where = logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
    text = f"{record.getMessage()} {where}"
    return record.name == "asyncio" and "never retrieved" in text and "tests/test_replicas_stress.py" not in text \
        and "/tests/test_" in text


async def test_two_replicas_under_mixed_load_handle_everything_once_in_order(
        tmp_path: Path, postgres_url: str, config_path: Path, counter: Path) -> None:
    base = Settings(BATON_DATABASE_URL=postgres_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                    BATON_ADAPTERS="playground")
    expiring = base.model_copy(update={"approval_expiry_seconds": EXPIRY_SECONDS})
    # An earlier test's task that ended in an exception nobody retrieved (test_recovery's stopped drains) is
    # logged by asyncio when it is collected, which happened during this test now and then: collected first.
    gc.collect()
    logs = _Records()
    logging.getLogger().addHandler(logs)
    try:
        async with Baton(expiring) as one, Baton(base) as two:
            seed = int(os.environ.get("STRESS_SEED") or random.randrange(10**6))
            print(f"replicas chosen with random.Random({seed}): STRESS_SEED={seed} chooses them again")
            asked = await _stress(one, two, seed)
            left: dict[str, list[Any]] = {}

            async def settled() -> bool:
                left.clear()
                left.update(await _left(one))
                return not left
            try:  # on a slow machine under the whole suite this took over 60 s once (23 s alone)
                await until(settled, "every event handled, every message sent, every card decided", 180)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; left (first 10 of each): {left}") from None
            async with one.db.read() as session:
                events = (await session.exec(select(InboundEvent))).all()
                outbox = (await session.exec(select(OutboxMessage).order_by(OutboxMessage.id))).all()
                shown = (await session.exec(select(PlaygroundMessage).where(PlaygroundMessage.is_bot))).all()
                approvals = (await session.exec(select(Approval))).all()
                runs = {run.id: run for run in (await session.exec(select(Run))).all()}
                records = (await session.exec(select(ThreadRecord))).all()
    finally:
        logging.getLogger().removeHandler(logs)

    troubles = [f"{r.name} {r.levelname}: {r.getMessage()} {r.exc_text or ''}" for r in logs.records
                if (r.levelno >= logging.ERROR and not _from_another_test(r)) or "deadlock" in r.getMessage().lower()
                or "OperationalError" in (r.exc_text or r.getMessage())]
    assert troubles == []
    assert not [m.text for m in shown if "Something went wrong" in m.text]

    # Each event stored once, handled once (its outcome is set once, by the replica that handled it).
    assert [key for key, n in Counter((e.platform, e.event_id) for e in events).items() if n > 1] == []
    assert [e for e in events if e.status != "done"] == []

    # Side effects: every "run uptime force" ran exactly once; a restart ran once if approved, else never.
    ran = Counter(runs_in(counter))
    assert ran["uptime"] == len(asked["uptime_events"])
    approved = Counter(runs[a.run_id].input_text.split("service=")[1].split()[0] for a in approvals
                       if a.status == "approved")
    assert {line: n for line, n in ran.items() if line != "uptime"} == {
        f"restart {service}": n for service, n in approved.items()}
    # Each card ended as its clicks decided, or expired first (replica one's expiry may beat a click on a slow
    # machine): never decided by someone who may not, never approved when only refusals came.
    decided = {"reject": {("rejected", "carol"), ("stale", "Baton")},
               "crowd": {("approved", "bob"), ("stale", "Baton")}, "both": {("approved", "bob"), ("stale", "Baton")},
               "expire": {("stale", "Baton")}, "outsiders": {("stale", "Baton")}}
    plans = {a.id: (asked["plans"].get(a.id), a.status, a.decided_by) for a in approvals}
    assert [p for p in plans.values() if p[0] is None or p[1:] not in decided[p[0]]] == [], plans

    # In each thread, the messages were shown in the order their rows were stored.
    for thread in {row.thread for row in outbox}:
        posted = [int(row.platform_message_id) for row in outbox  # type: ignore[arg-type]
                  if row.thread == thread and row.kind != "update"]
        assert posted == sorted(posted), f"thread {thread}: rows in id order were shown as {posted}"

    # No thread is left running, or waiting with no card to decide.
    assert {r.thread: r.status for r in records if r.status not in ("idle", "done", "failed")} == {}
    assert {r.thread: r.lease_owner for r in records if r.lease_owner is not None} == {}  # every thread given back
