"""``GET /metrics``: Baton's shared numbers from the database, the same on every replica, in Prometheus' format."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, update
from sqlmodel import Session

from bot.metrics import SETTLED, Metrics
from bot.settings import SECRET_VARIABLES, Settings
from storage.db import Database, sync_url
from storage.models import Approval, DigestRun, InboundEvent, OutboxMessage, Run, ThreadRecord, utcnow
from tests.support import BatonProcess, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ALLOWED_LABELS = {"graph", "status", "platform", "le"}
OWN = {"baton_up", "baton_build_info", "baton_adapter_healthy", "baton_metrics_collect_seconds",  # per replica
       "baton_messages_undeliverable_total"}


def parse(text: str) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape(baton: BatonProcess, **headers: str) -> Samples:
    response = httpx.get(f"{baton.url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def wait_metric(baton: BatonProcess, name: str, expected: float, **labels: str) -> Samples:
    """Scrapes until ``name{labels}`` is ``expected`` (a run's row is written after its reply is seen)."""
    def reached() -> Samples | None:
        samples = scrape(baton)
        return samples if value(samples, name, **labels) == expected else None

    return wait_for(reached, 20, f"{name}{labels} == {expected}")


def insert(database_url: str, *rows: Any) -> list[int]:
    engine = create_engine(sync_url(database_url))
    try:
        with Session(engine) as session:
            for row in rows:
                session.add(row)
                session.flush()
            ids = [row.id for row in rows]
            session.commit()
        return ids
    finally:
        engine.dispose()


def test_a_dashboard_reads_runs_approvals_events_and_the_outbox(start_baton, database_url: str, counter) -> None:
    baton = start_baton(database_url)
    chat = baton.client()
    before = scrape(baton)
    assert value(before, "baton_up") == 1 and value(before, "baton_database_up") == 1
    assert value(before, "baton_adapter_healthy", platform="playground") == 1
    assert value(before, "baton_inbound_events_total", platform="playground") == 0
    assert not [key for key in before if key[0].startswith("baton_runs_")]  # no graph has run yet

    chat.wait_reply(chat.ask("@baton run uptime"), "did uptime")
    done = wait_metric(baton, "baton_runs_finished_total", 1, graph="runbook", status="done")
    assert value(done, "baton_runs_started_total", graph="runbook") == 1
    assert value(done, "baton_runs_finished_total", graph="runbook", status="failed") == 0
    assert value(done, "baton_run_turnaround_seconds_count", graph="runbook") == 1
    assert value(done, "baton_run_turnaround_seconds_bucket", graph="runbook", le="+Inf") == 1
    assert value(done, "baton_inbound_events_total", platform="playground") == 1

    thread = chat.ask("@baton run restart service=web")  # high risk: an approval card waits
    card = chat.wait_card(thread)
    waiting = wait_metric(baton, "baton_approvals_pending", 1, graph="runbook")
    assert value(waiting, "baton_runs_active", graph="runbook", status="waiting") == 1
    assert value(waiting, "baton_approval_oldest_pending_seconds", graph="runbook") >= 0
    assert value(waiting, "baton_runs_started_total", graph="runbook") == 2

    assert chat.click(card, "bob").status_code == 202
    chat.wait_reply(thread, "did restart web")
    approved = wait_metric(baton, "baton_runs_finished_total", 2, graph="runbook", status="done")
    assert value(approved, "baton_approvals_pending", graph="runbook") is None  # none waits any more
    assert value(approved, "baton_runs_active", graph="runbook", status="waiting") == 0
    assert value(approved, "baton_run_waited_seconds_total", graph="runbook") > 0
    assert value(approved, "baton_inbound_events_total", platform="playground") == 3  # two messages, a click

    chat.wait_reply(chat.ask("@baton run fails"), "disk full")
    failed = wait_metric(baton, "baton_runs_finished_total", 1, graph="runbook", status="failed")
    assert value(failed, "baton_run_turnaround_seconds_count", graph="runbook") == 3

    # A Slack message no replica sends (this Baton serves only the playground): undelivered for an hour.
    insert(database_url, OutboxMessage(platform="slack", channel="C-secret-channel", payload={"text": "hello"},
                                       created_at=utcnow() - timedelta(hours=1)))
    stuck = wait_metric(baton, "baton_outbox_messages", 1, platform="slack", status="pending")
    assert value(stuck, "baton_outbox_oldest_undelivered_seconds", platform="slack") >= 3600
    assert value(stuck, "baton_outbox_messages", platform="playground", status="pending") == 0
    assert value(stuck, "baton_outbox_oldest_undelivered_seconds", platform="playground") == 0

    text = httpx.get(f"{baton.url}/metrics", timeout=30).text
    for private in ("general", "alice", "bob", "C-secret-channel", "hello", "restart", "service=web"):
        assert private not in text, private
    for name, labels in stuck:
        extra = {label for label, _ in labels} - ALLOWED_LABELS
        assert not extra or (name == "baton_build_info" and extra == {"version", "replica"}) or (
            name == "baton_messages_undeliverable_total" and extra == {"reason"}), (name, labels)

    # Every replica reports the same shared numbers (a dashboard takes max(), not sum()).
    other = start_baton(database_url, name="second")
    first_shared = {key: v for key, v in scrape(baton).items() if key[0] not in OWN}
    assert wait_for(lambda: {key: v for key, v in scrape(other).items()
                             if key[0] not in OWN and "oldest" not in key[0]}
                    == {key: v for key, v in first_shared.items() if "oldest" not in key[0]},
                    20, "the second replica to report what the first does")


def test_the_endpoint_answers_methods_and_content_types_and_can_be_turned_off(start_baton, sqlite_url: str) -> None:
    baton = start_baton(sqlite_url)
    assert httpx.post(f"{baton.url}/metrics", timeout=10).status_code == 405
    head = httpx.head(f"{baton.url}/metrics", timeout=10)
    assert head.status_code == 200 and head.content == b"" and head.headers["content-type"].startswith("text/plain")
    asked = httpx.get(f"{baton.url}/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"},
                      timeout=10)
    assert asked.headers["content-type"].startswith("application/openmetrics-text")
    names = {family.name for family in openmetrics_families(asked.text)}
    assert {"baton_up", "baton_inbound_events", "baton_outbox_messages", "baton_build"} <= names

    off = start_baton(sqlite_url, name="off", env={"BATON_METRICS": "false"})
    assert httpx.get(f"{off.url}/metrics", timeout=10).status_code == 404
    assert httpx.get(f"{off.url}/healthz", timeout=10).status_code == 200


def test_a_token_guards_the_endpoint_when_set(start_baton, sqlite_url: str) -> None:
    baton = start_baton(sqlite_url, env={"BATON_METRICS_TOKEN": "s3cret-scrape-token"})
    url = f"{baton.url}/metrics"
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret-scrape-token"}):
        refused = httpx.get(url, headers=headers, timeout=10)
        assert refused.status_code == 401 and "BATON_METRICS_TOKEN" in refused.json()["detail"]
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "s3cret" not in refused.text
        assert httpx.head(url, headers=headers, timeout=10).status_code == 401
    allowed = httpx.get(url, headers={"authorization": "Bearer s3cret-scrape-token"}, timeout=10)
    assert allowed.status_code == 200 and value(parse(allowed.text), "baton_up") == 1
    assert "s3cret" not in baton.log.read_text()


@pytest.mark.asyncio
async def test_totals_kept_between_scrapes_match_the_table(database: Database, database_url: str) -> None:
    """Rows older than ``SETTLED`` are added up once and kept; a run still open then is read again until it
    ends, and is then counted once. Each scrape must equal a full count of the table."""
    old = utcnow() - SETTLED - timedelta(minutes=5)
    [record] = insert(database_url, ThreadRecord(platform="slack", channel="C1", thread="1"))

    def run(status: str, graph: str = "runbook", **values: Any) -> Run:
        return Run(thread_record_id=record, platform="slack", channel="C1", graph=graph, status=status,
                   requested_by="U1", correlation_id="c", started_at=old, **values)

    running, waiting, _, _ = insert(database_url, run("running"), run("waiting", tokens=10, cost=0.5),
                                    run("done", turnaround_ms=1200, tokens=5),
                                    run("failed", graph="deploy", turnaround_ms=400_000))
    insert(database_url, *(InboundEvent(platform="slack", event_id=f"e{n}", kind="message", channel="C1", thread="1",
                                        user="U1", received_at=old) for n in range(3)))
    metrics = Metrics(database, "test", [], ["slack"])

    async def shared() -> Samples:
        families = await metrics._shared()
        return {(s.name, frozenset(s.labels.items())): s.value for family in families for s in family.samples}

    first = await shared()
    assert value(first, "baton_runs_started_total", graph="runbook") == 3
    assert value(first, "baton_runs_active", graph="runbook", status="running") == 1
    assert value(first, "baton_runs_active", graph="runbook", status="waiting") == 1
    assert value(first, "baton_runs_finished_total", graph="runbook", status="done") == 1
    assert value(first, "baton_runs_finished_total", graph="deploy", status="failed") == 1
    assert value(first, "baton_run_turnaround_seconds_bucket", graph="runbook", le="1") == 0
    assert value(first, "baton_run_turnaround_seconds_bucket", graph="runbook", le="2.5") == 1
    assert value(first, "baton_run_turnaround_seconds_bucket", graph="deploy", le="300") == 0
    assert value(first, "baton_run_turnaround_seconds_bucket", graph="deploy", le="900") == 1
    assert value(first, "baton_run_turnaround_seconds_sum", graph="deploy") == 400
    assert value(first, "baton_model_tokens_total", graph="runbook") == 15  # the waiting run's spend counts already
    assert value(first, "baton_model_cost_dollars_total", graph="runbook") == 0.5
    assert value(first, "baton_inbound_events_total", platform="slack") == 3
    assert metrics.runs.open_ids == {running, waiting}  # kept: the settled rows are not read again

    # The open runs end, a newer run starts (too new to be kept), more old events arrive.
    engine = create_engine(sync_url(database_url))
    with engine.begin() as connection:
        connection.execute(update(Run).where(Run.id == running).values(status="done", turnaround_ms=3000))
        connection.execute(update(Run).where(Run.id == waiting).values(status="failed", waited_seconds=60.0))  # expired
    engine.dispose()
    insert(database_url, Run(thread_record_id=record, platform="slack", channel="C1", graph="runbook", status="running",
                             requested_by="U1", correlation_id="c"))
    insert(database_url, InboundEvent(platform="slack", event_id="e-new", kind="message", channel="C1", thread="1",
                                      user="U1"))
    for _ in range(2):  # the same, scrape after scrape: the ended runs are counted once
        later = await shared()
        assert value(later, "baton_runs_started_total", graph="runbook") == 4
        assert value(later, "baton_runs_finished_total", graph="runbook", status="done") == 2
        assert value(later, "baton_runs_finished_total", graph="runbook", status="failed") == 1
        # no run ends "rejected" (a rejected request's graph answers it: "done"); a series always 0 misled dashboards
        assert value(later, "baton_runs_finished_total", graph="runbook", status="rejected") is None
        assert value(later, "baton_runs_active", graph="runbook", status="running") == 1  # the new one
        assert value(later, "baton_runs_active", graph="runbook", status="waiting") == 0
        assert value(later, "baton_run_turnaround_seconds_count", graph="runbook") == 2
        assert value(later, "baton_run_waited_seconds_total", graph="runbook") == 60
        assert value(later, "baton_model_tokens_total", graph="runbook") == 15
        assert value(later, "baton_inbound_events_total", platform="slack") == 4
        assert metrics.runs.open_ids == set()

    # A digest's own model summary: no run holds it, it counts under the digest graph (as its card does).
    insert(database_url, DigestRun(schedule_key="k", fire_time=old, platform="slack", channel="C1", window_start=old,
                                   window_end=old, status="posted", tokens=120, cost=0.02))
    digest = await shared()
    assert value(digest, "baton_model_tokens_total", graph="digest") == 120
    assert value(digest, "baton_model_cost_dollars_total", graph="digest") == 0.02
    assert value(digest, "baton_runs_started_total", graph="digest") == 0

    # A pending approval of a settled run, and one that is a choice card (no approval): only the first counts.
    insert(database_url, Approval(run_id=waiting, thread_record_id=record, interrupt_id="i1", graph="runbook",
                                  summary="restart?", requested_by="U1", created_at=old),
           Approval(run_id=waiting, thread_record_id=record, interrupt_id="i2", graph="choose", kind="choice",
                    summary="which?", requested_by="U1"))
    approvals = await shared()
    assert value(approvals, "baton_approvals_pending", graph="runbook") == 1
    assert value(approvals, "baton_approvals_pending", graph="choose") is None
    assert value(approvals, "baton_approval_oldest_pending_seconds", graph="runbook") >= SETTLED.total_seconds()


def test_the_settings_are_read_and_checked(tmp_path) -> None:
    def settings(**values: str) -> Settings:
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    assert settings().metrics is True and settings().metrics_token is None
    assert settings(BATON_METRICS="false").metrics is False
    assert settings(BATON_METRICS_TOKEN="").metrics_token is None  # a .env line left empty: no token
    for wrong in ({"BATON_METRICS": "maybe"}, {"BATON_METRICS_TOKEN": "   "}):
        with pytest.raises(ValueError) as refused:
            settings(**wrong)
        assert next(iter(wrong)) in str(refused.value)
    assert "BATON_METRICS_TOKEN" in SECRET_VARIABLES  # never handed to a runbook's command
