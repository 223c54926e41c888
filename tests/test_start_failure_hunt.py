"""A start that fails part-way stops what it had started: the adapters before the one that failed, their delivery
loops, the checkpointer and the database's connections."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from bot.app import Baton, StartFailed
from bot.settings import Settings
from storage.db import sqlite_path
from storage.migrate import upgrade
from tests.fake_discord import FakeDiscord
from tests.fake_slack import FakeSlack
from tests.support import until
from tests.test_discord import fake_discord  # noqa: F401 (a fixture)
from tests.test_outbox_hunt import fake_slack  # noqa: F401 (a fixture)


def _running() -> set[str]:
    """The tasks running besides the test's own, and the threads of SQLite connections (aiosqlite's)."""
    tasks = {f"task {task.get_name()}: {task.get_coro()!r}" for task in asyncio.all_tasks()
             if task is not asyncio.current_task() and not task.done()}
    return tasks | {f"thread {thread.name}" for thread in threading.enumerate() if "connection_worker" in thread.name}


async def _nothing_left_running(before: set[str]) -> None:
    """Everything the start made has ended (discord.py's own tasks end within a few seconds of its close)."""
    try:
        await until(lambda: not _running() - before, "what the failed start had started to end", timeout=10)
    except AssertionError:
        raise AssertionError(f"still running after the failed start: {sorted(_running() - before)}") from None


async def test_slack_refusing_its_token_disconnects_discord_which_had_started(
        fake_discord: FakeDiscord, fake_slack: FakeSlack, sqlite_url: str, config_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Discord starts first (adapters start in their names' order), Slack then refuses its token: Baton said it
    cannot start, and Discord's gateway stayed connected, its delivery loop polling, the bot online and taking
    the events sent to it, in a process that no longer served anything."""
    for name, value in {**fake_discord.env(), **fake_slack.env(), "SLACK_BOT_TOKEN": "xoxb-revoked"}.items():
        monkeypatch.setenv(name, value)
    settings = Settings(BATON_DATABASE_URL=sqlite_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="discord,slack")
    before = _running()
    baton = Baton(settings)
    with pytest.raises(StartFailed, match=r"Slack refused SLACK_BOT_TOKEN"):
        async with baton:
            pytest.fail("Baton started with a refused Slack token")
    assert fake_discord.identifies, "Discord had started before Slack was refused"
    await until(lambda: fake_discord.sessions == 0, "Discord's gateway to be closed", timeout=10)
    await _nothing_left_running(before)


async def test_a_later_adapter_refused_stops_the_delivery_loop_of_the_playground_started_before_it(
        fake_slack: FakeSlack, sqlite_url: str, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**fake_slack.env(), "SLACK_BOT_TOKEN": "xoxb-revoked"}.items():
        monkeypatch.setenv(name, value)
    settings = Settings(BATON_DATABASE_URL=sqlite_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground,slack")
    before = _running()
    with pytest.raises(StartFailed, match=r"Slack refused SLACK_BOT_TOKEN"):
        async with Baton(settings):
            pytest.fail("Baton started with a refused Slack token")
    await _nothing_left_running(before)


async def test_a_start_step_failing_after_the_adapters_started_stops_them(
        sqlite_url: str, config_path: Path) -> None:
    """The digests' schedules are stored after the adapters started (``DigestScheduler.start``): a database that
    failed that write left the playground's loops running, and stopping the scheduler that never started raised
    over the start's own error."""
    config_path.write_text(config_path.read_text() + "digests:\n  - platform: playground\n    channel: ops\n"
                                                     "    cron: '0 9 * * *'\n")
    upgrade(sqlite_url)
    with closing(sqlite3.connect(sqlite_path(sqlite_url))) as connection:  # the write refused, as a database can
        connection.execute("CREATE TRIGGER refused BEFORE INSERT ON digest_schedules "
                           "BEGIN SELECT RAISE(ABORT, 'the database refused this write'); END")
    settings = Settings(BATON_DATABASE_URL=sqlite_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    before = _running()
    with pytest.raises(Exception, match="the database refused this write"):
        async with Baton(settings):
            pytest.fail("Baton started though its schedules could not be stored")
    await _nothing_left_running(before)


async def test_an_adapter_whose_stop_raises_does_not_keep_the_others_running(
        fake_slack: FakeSlack, sqlite_url: str, config_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Adapters stop in the reverse of their start: Slack's stop raising (a bug, a library's close) left the
    playground's delivery loops, the orchestrator, the checkpointer and the database's connections running."""
    for name, value in fake_slack.env().items():
        monkeypatch.setenv(name, value)
    settings = Settings(BATON_DATABASE_URL=sqlite_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground,slack")
    before = _running()
    async with Baton(settings) as baton:
        slack = next(adapter for adapter in baton.adapters if adapter.name == "slack")
        stop = slack.stop

        async def stop_then_raise() -> None:
            await stop()
            raise RuntimeError("a library's close raised")
        monkeypatch.setattr(slack, "stop", stop_then_raise)
    await _nothing_left_running(before)
    assert "stopping the slack adapter failed; the rest of Baton is stopped still" in caplog.text
