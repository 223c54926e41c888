"""What model calls cost: the routing call of a request answered without a run is kept too, and a run's spend
after the digest of its start is in a later digest."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime

from sqlmodel import update

from bot.config import BatonConfig, Digest
from bot.messages import Message
from storage.models import Run, ThreadRecord
from tests.support import wait_for
from tests.test_digests import Clock, digest_service, posted_messages
from tests.test_digests_hunt2 import guess, model_env  # noqa: F401  (the fixture)


def spend(database_url: str) -> list[tuple[str, int | None]]:
    with sqlite3.connect(database_url.removeprefix("sqlite:///")) as db:
        return db.execute("SELECT graph, tokens FROM runs ORDER BY id").fetchall()


def test_a_plain_words_request_found_a_duplicate_keeps_what_routing_it_cost(start_baton, sqlite_url, model_env):
    """The model routed the same plain-words request, asked twice in a channel, to `announce` (deduped): the
    second got "already asked" and no run, so what asking the model cost was kept nowhere (digests and
    /metrics counted 110 tokens of 220; found by the cost hunt)."""
    pg = start_baton(sqlite_url, env=model_env(guess("announce", 0.95), guess("announce", 0.95))).client()
    text = "@baton please tell everyone the database is down tonight"
    pg.wait_card(pg.ask(text, channel="ops", user="alice"))
    second = pg.ask(text, channel="ops", user="bob")
    reply = pg.wait_reply(second, "")
    assert "already" in reply["text"].lower() or "same request" in reply["text"].lower(), reply["text"]
    assert wait_for(lambda: sum(tokens or 0 for _, tokens in spend(sqlite_url)) == 220 or None,
                    what="both routing calls' tokens to be kept", timeout=5)


async def test_a_runs_model_calls_after_a_digest_are_counted_by_a_later_one(sqlite_url):
    """An assistant request asked at 16:00 stopped at its approval card with 1,500 tokens spent; the 17:00 digest
    counted them. Approved the next morning, its answer's model call added 250 tokens to the run: the next
    digest counts runs by when they started, so no digest ever showed those 250 (/metrics did)."""
    clock = Clock(datetime(2026, 6, 1, 16, 0, tzinfo=UTC))
    daily = Digest(platform="playground", channel="ops", cron="0 17 * * *", timezone="UTC")
    async with digest_service(sqlite_url, clock, BatonConfig(digests=[daily])) as digests:
        async with digests.db.session() as session:
            record = ThreadRecord(platform="playground", channel="ops", thread="1", status="waiting")
            session.add(record)
            await session.flush()
            run = Run(thread_record_id=record.id, platform="playground", channel="ops", graph="assistant",
                      status="waiting", requested_by="alice", correlation_id="c1", started_at=clock.now,
                      tokens=1500, cost=0.003)
            session.add(run)
            await session.flush()
            run_id = run.id
        clock.now = datetime(2026, 6, 1, 17, 0, tzinfo=UTC)
        assert await digests.run_due(clock.now) == 1
        approved = datetime(2026, 6, 2, 10, 0, tzinfo=UTC)
        async with digests.db.session() as session:
            await session.exec(update(Run).where(Run.id == run_id).values(  # type: ignore[arg-type]
                tokens=Run.tokens + 250, cost=Run.cost + 0.0005, status="done", finished_at=approved,
                turnaround_ms=18 * 3600 * 1000, waited_seconds=18 * 3600.0))
        clock.now = datetime(2026, 6, 2, 17, 0, tzinfo=UTC)
        assert await digests.run_due(clock.now) == 1
        texts = [Message.model_validate(message.payload).plain_text() for message in await posted_messages(digests)]
    assert len(texts) == 2, texts
    shown = [re.search(r"Model tokens: ([\d,]+), cost (\S+)", text) for text in texts]
    assert sum(int(found[1].replace(",", "")) for found in shown if found) == 1750, texts
    assert [found[2] for found in shown if found] == ["$0.0035"], texts
