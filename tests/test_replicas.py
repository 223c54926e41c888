"""Two Baton processes share one PostgreSQL database and both receive every event and click."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support import has_buttons, runs_in, wait_for

pytestmark = pytest.mark.postgres


def test_two_instances_handle_each_event_and_click_exactly_once(start_baton, postgres_url, counter):
    one = start_baton(postgres_url, name="replica-a").client()
    two = start_baton(postgres_url, name="replica-b").client()

    def to_both(send):  # the platform delivers the same event to both replicas at the same time
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(send, (one, two)))

    answers = to_both(lambda pg: pg.say("@baton run uptime", event_id="evt-uptime"))
    assert sorted(a.json()["delivery"] for a in answers) == ["accepted", "duplicate"]
    uptime_thread = answers[0].json()["thread_id"]

    answers = to_both(lambda pg: pg.say("@baton run restart service=web", event_id="evt-restart"))
    restart_thread = answers[0].json()["thread_id"]
    card = one.wait_card(restart_thread)

    for n in range(3):  # the same click, redelivered three times to both replicas
        answers = to_both(lambda pg: pg.click(card, "bob", event_id="click-approve"))
        deliveries = sorted(a.json()["delivery"] for a in answers)
        assert deliveries == (["duplicate", "duplicate"] if n else ["accepted", "duplicate"])

    one.wait_reply(uptime_thread, "did uptime")
    two.wait_reply(restart_thread, "did restart web")
    assert sorted(runs_in(counter)) == ["restart web", "uptime"]
    assert len(one.bot_replies(uptime_thread)) == 1
    finals = [m for m in two.bot_replies(restart_thread) if "did restart web" in m["text"]]
    assert len(finals) == 1


def test_many_requests_spread_over_two_replicas_each_run_once(start_baton, postgres_url, counter):
    replicas = [start_baton(postgres_url, name=f"replica-{n}").client() for n in range(2)]
    threads = []
    for n in range(12):
        for pg in replicas:
            response = pg.say("@baton run uptime force", event_id=f"evt-{n}", channel="ops")
        threads.append(response.json()["thread_id"])
    wait_for(lambda: len(runs_in(counter)) >= 12, what="twelve runs")
    for thread in threads:
        replicas[0].wait_reply(thread, "did uptime")
        assert len(replicas[0].bot_replies(thread)) == 1
    assert len(runs_in(counter)) == 12


def test_the_same_request_asked_twice_at_once_runs_once(start_baton, postgres_url, counter):
    """The duplicate check and the run it lets start were two steps: under READ COMMITTED, two identical
    requests at the same moment (to one replica or two) both found no twin, and both ran."""
    one = start_baton(postgres_url, name="replica-a").client()
    two = start_baton(postgres_url, name="replica-b").client()

    def outcome(thread: str) -> str | None:
        replies = one.bot_replies(thread)
        if any("The same request is " in m["text"] for m in replies):  # running, or waiting for approval
            return "link"
        return "card" if any(has_buttons(m) for m in replies) else None

    for channel in ("general", "ops", "random"):
        for service in ("web", "api", "worker"):
            for replicas in ((one, two), (one, one)):
                with ThreadPoolExecutor(2) as pool:
                    answers = list(pool.map(lambda pg: pg.say(f"@baton run restart service={service}", channel=channel,
                                                                user="carol"), replicas))
                threads = [answer.json()["thread_id"] for answer in answers]
                wait_for(lambda: sorted(map(outcome, threads), key=str) == ["card", "link"], 20,  # noqa: B023
                         f"one approval card and one link for restart {service} in #{channel}")
                if replicas == (one, two):
                    for thread in threads:  # withdrawn, so that the next round asks anew
                        card = next((m for m in one.bot_replies(thread) if has_buttons(m)), None)
                        if card is not None:
                            one.click(card, "carol", action="reject")
                            one.wait_reply(thread, "Rejected by carol")
    assert runs_in(counter) == []
