"""``GET /metrics``, ``status`` and ``help`` as a demanding operator meets them (a bug hunt's tests).

Each test here failed on the code before its fix: a scrape that hung while the database held its reading; an
outage logged at every scrape; chatter a model routed nowhere counted as requests of a graph "route" (and a
counter that went down when a choice card was picked); ``status ops`` answered as if nothing followed ``status``
(and, once that was said, a model's routing taken for words after it).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, update

import bot.metrics
from bot.app import Baton
from bot.messages import InboundMessage
from bot.metrics import SETTLED, Metrics
from bot.settings import Settings
from storage.db import Database, sync_url
from storage.migrate import upgrade
from storage.models import Run, ThreadRecord, utcnow
from tests.db_proxy import DatabaseProxy
from tests.fake_models import script
from tests.test_graph_modules import _reply
from tests.test_metrics import Samples, insert, value


def samples_of(families: list[Any]) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value for family in families for s in family.samples}


@pytest.mark.asyncio
async def test_a_scrape_answers_while_the_database_holds_its_reading(postgres_url: str, monkeypatch, caplog) -> None:
    """A database that takes the reading and never answers (here a migration's lock on ``runs``; a server that
    stopped answering is the same): the scrape hung for as long, so Prometheus marked the replica down (``up``
    0, no ``baton_up``) and every later scrape queued behind it. Now it says ``baton_database_up 0`` within
    ``COLLECT_TIMEOUT_SECONDS``, once in the log, and the reading goes on to be found by a later scrape."""
    monkeypatch.setattr(bot.metrics, "REUSE_SECONDS", 0.0)
    upgrade(postgres_url)
    database = Database(postgres_url)
    metrics = Metrics(database, "test", [], ["slack"])
    try:
        assert value(samples_of(await metrics.families()), "baton_database_up") == 1
        # Shortened once the first reading (a new connection's, slower on a loaded machine: 0.7 s seen) is in.
        monkeypatch.setattr(bot.metrics, "COLLECT_TIMEOUT_SECONDS", 0.3, raising=False)
        with psycopg.connect(postgres_url) as holder:
            holder.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
            for _ in range(3):  # each answers in time, the stuck reading shared (not one more each)
                async with asyncio.timeout(3):
                    stuck = samples_of(await metrics.families())
                assert value(stuck, "baton_database_up") == 0 and value(stuck, "baton_up") == 1
                assert value(stuck, "baton_runs_started_total", graph="runbook") is None
            late = [r for r in caplog.records if "did not answer" in r.getMessage()]
            assert len(late) == 1, late
            holder.rollback()
        async with asyncio.timeout(3):
            while value(samples_of(await metrics.families()), "baton_database_up") != 1:
                await asyncio.sleep(0.02)
    finally:
        await database.dispose()


@pytest.mark.asyncio
async def test_an_outage_is_logged_once_and_its_end_too(postgres_url: str, monkeypatch, caplog) -> None:
    """The database away (its server down): every scrape logged the same warning, three lines with SQLAlchemy's
    link, four times a minute per replica all through the outage, and nothing said when it was read again."""
    monkeypatch.setattr(bot.metrics, "REUSE_SECONDS", 0.0)
    upgrade(postgres_url)
    proxy = DatabaseProxy().start()
    database = Database(proxy.url(postgres_url))
    metrics = Metrics(database, "test", [], ["slack"])
    caplog.set_level(logging.INFO, logger="bot.metrics")
    try:
        assert value(samples_of(await metrics.families()), "baton_database_up") == 1
        proxy.cut()
        for _ in range(3):
            assert value(samples_of(await metrics.families()), "baton_database_up") == 0
        proxy.restore()
        assert value(samples_of(await metrics.families()), "baton_database_up") == 1
    finally:
        await database.dispose()
        proxy.stop()
    said = [record for record in caplog.records if record.name == "bot.metrics"]
    assert [record.levelname for record in said] == ["WARNING", "INFO"], [r.getMessage() for r in said]
    assert "\n" not in said[0].getMessage() and "Connection refused" in said[0].getMessage()
    assert "read again" in said[1].getMessage()


@pytest.mark.asyncio
async def test_chatter_is_no_request_and_no_counter_goes_down(database: Database, database_url: str) -> None:
    """With a model, a 'thanks!' it routed nowhere is kept as a finished run of the pseudo-graph ``route`` (for
    what asking cost): ``baton_runs_started_total{graph="route"}``, a graph nobody has, grew with every 'thanks!',
    with 0 s turnarounds. As a digest counts them, no request; what it cost still counted. A choice card's run
    (``choose``) counts as before, picked from or not: a counter must never go down (Prometheus reads a drop as a
    reset), and a card still waiting was counted already."""
    old = utcnow() - SETTLED - timedelta(minutes=5)
    [record] = insert(database_url, ThreadRecord(platform="slack", channel="C1", thread="1"))

    def run(graph: str, status: str, **values: Any) -> Run:
        return Run(thread_record_id=record, platform="slack", channel="C1", graph=graph, status=status,
                   requested_by="U1", correlation_id="c", **values)

    metrics = Metrics(database, "test", [], ["slack"])
    cards = []
    for started_at in (old, utcnow()):  # kept totals, and rows counted afresh: the same
        insert(database_url, run("route", "done", started_at=started_at, turnaround_ms=0, tokens=30, cost=0.003))
        cards += insert(database_url, run("choose", "waiting", started_at=started_at, tokens=40))
    scraped = samples_of(await metrics._shared())
    assert value(scraped, "baton_runs_started_total", graph="route") == 0
    assert value(scraped, "baton_runs_finished_total", graph="route", status="done") == 0
    assert value(scraped, "baton_run_turnaround_seconds_count", graph="route") == 0
    assert value(scraped, "baton_model_tokens_total", graph="route") == 60
    assert value(scraped, "baton_model_cost_dollars_total", graph="route") == pytest.approx(0.006)
    assert value(scraped, "baton_runs_started_total", graph="choose") == 2
    assert value(scraped, "baton_runs_active", graph="choose", status="waiting") == 2

    engine = create_engine(sync_url(database_url))  # both cards picked from: their runs end "done"
    with engine.begin() as connection:
        connection.execute(update(Run).where(Run.id.in_(cards)).values(  # type: ignore[union-attr]
            status="done", turnaround_ms=20_000, waited_seconds=20.0))
    engine.dispose()
    picked = samples_of(await metrics._shared())
    for (name, labels), before in scraped.items():
        if name.endswith("_total") or name.endswith("_count") or name.endswith("_bucket"):
            assert picked[(name, labels)] >= before, (name, dict(labels))
    assert value(picked, "baton_runs_finished_total", graph="choose", status="done") == 2
    assert value(picked, "baton_run_waited_seconds_total", graph="choose") == 40


async def test_status_with_words_after_it_says_they_were_not_used(tmp_path, config_path) -> None:
    """``status ops`` asked in #general was answered with #general's status as if nothing had been said after
    it: "Nothing is running..." read as the answer about ops."""
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 's.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        async with baton.db.session() as session:
            session.add(ThreadRecord(platform="playground", channel="general", thread="busy", status="waiting",
                                     title="run restart service=web", requested_by="bob"))
        replies = []
        for thread, channel, text in (("1", "random", "status ops"), ("2", "general", "status  of\u202edeploy "),
                                      ("3", "general", "status")):
            await baton.accept_message(InboundMessage(platform="playground", channel=channel, thread=thread,
                                                      event_id=f"e{thread}", user="alice", text=text, addressed=True))
            replies.append(await _reply(baton, thread))
        quiet, busy, plain = replies
    assert quiet.startswith("*Status*\nNothing is running") and "`ops` was not used" in quiet, quiet
    assert busy.startswith("*Status: 1 active thread*") and "`of\ufffddeploy` was not used" in busy, busy
    assert "not used" not in plain and "run restart service=web" in plain, plain


async def test_status_a_model_routed_to_says_nothing_of_words_unused(tmp_path, config_path, monkeypatch) -> None:
    """A model routing "what is going on in here?" to ``status`` hands it the whole request: status said that
    those words were not used, as if they had been written after ``status``."""
    env = script(tmp_path / "script.json", [{"tool_calls": [{"name": "GraphGuess", "id": "g1", "args": {
        "graph": "status", "confidence": 0.93, "alternatives": []}}]}])
    for name, setting in env.items():
        monkeypatch.setenv(name, setting)
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 's.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="what is going on in here?",
                                                  addressed=True))
        reply = await _reply(baton, "1")
    assert reply.startswith("*Status*\nNothing is running") and "not used" not in reply, reply
