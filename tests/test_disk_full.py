"""Baton's SQLite files on a disk that really fills up (a tmpfs of a few megabytes), and room that comes back.

SQLite's ``max_page_count`` (test_database_outage.py) limits one connection's file; these fill the disk itself, so
that every connection meets it: the checkpointer's too, and the WAL's growth. A machine of this workplace was
seen with 287 MB free. Each test mounts its own tmpfs (root in a sandbox or CI container) and skips, saying why,
where mounting is not permitted; the mount is taken down even when the test fails.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from storage import checkpointer
from tests.support import slow_release, until

MOUNT_SIZE = "16m"


class FullDisk:
    """A tmpfs of its own, filled to the last byte by ``fill`` and given its room back by ``free``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / "filler"

    def fill(self) -> None:
        chunk = b"\0" * 4096
        with open(self._filler, "ab", buffering=0) as filler:
            try:
                while filler.write(chunk):
                    pass
            except OSError:  # ENOSPC: full
                pass

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[FullDisk]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={MOUNT_SIZE}", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a tmpfs cannot be mounted here (root in a container that may mount is needed): "
                    f"{(mounted.stderr or mounted.stdout).strip()}")
    try:
        yield FullDisk(mount_point)
    finally:
        if os.path.ismount(mount_point):  # lazily: a file a failed test left open must not keep it mounted
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


@asynccontextmanager
async def playground(database: Path, config_path: Path, **settings: str) -> AsyncIterator[httpx.AsyncClient]:
    from bot.server import create_app
    from bot.settings import Settings

    app = create_app(Settings(BATON_DATABASE_URL=f"sqlite:///{database}",  # type: ignore[call-arg]
                              BATON_CONFIG=config_path, BATON_ADAPTERS="playground", **settings))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
        yield http


async def ask(http: httpx.AsyncClient, text: str) -> str:
    asked = await http.post("/api/messages", json={"channel": "general", "user": "alice", "text": text})
    assert asked.status_code == 201, asked.text
    return str(asked.json()["thread_id"])


async def bot_replies(http: httpx.AsyncClient, thread: str) -> list[str]:
    replies = (await http.get(f"/api/threads/{thread}/messages")).json()["replies"]
    return [reply["text"] for reply in replies if reply["is_bot"]]


async def reply_with(http: httpx.AsyncClient, thread: str, words: str) -> str:
    async def found() -> str | None:
        return next((text for text in await bot_replies(http, thread) if words in text), None)

    return await until(found, f"a reply with {words!r} in thread {thread}", 30)


async def test_a_run_whose_checkpoints_cannot_be_written_is_told_so_in_words_and_baton_goes_on(
        tmp_path: Path, config_path: Path, full_disk: FullDisk, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoints file on a full disk, Baton's database not (a symlinked ``baton.checkpoints.db``, or the
    disk filling between the two writes): each run's first checkpoint fails. The thread was told
    "Run failed: `runbook` failed: OperationalError: database or disk is full", and the log said the same,
    nothing of what to do."""
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(checkpointer, "CHECKPOINT_ROOM_WAIT_SECONDS", 0.5)  # the run's wait for room, run out
    (full_disk.path / "checkpoints.db").touch()
    (tmp_path / "baton.checkpoints.db").symlink_to(full_disk.path / "checkpoints.db")
    async with playground(tmp_path / "baton.db", config_path) as http:
        full_disk.fill()
        thread = await ask(http, "@baton run uptime")  # stored: Baton's own database has room
        said = await reply_with(http, thread, "")  # its first reply
        assert said.startswith("*Run stopped*\n`runbook` stopped: Baton could not write to its database (database "
                               "or disk is full) just now"), said
        assert "OperationalError" not in said and "ask again" in said, said
        logged = [record.getMessage() for record in caplog.records if record.name == "baton.orchestrator"]
        assert any("free space on the disk" in line for line in logged), logged
        assert not [record for record in caplog.records if record.exc_info], "a traceback for a full disk"

        full_disk.free()
        again = await ask(http, "@baton run uptime force")
        assert "did uptime" in await reply_with(http, again, "did uptime")


async def test_a_disk_that_fills_during_a_run_costs_no_traceback_and_the_run_is_answered_once_after(
        tmp_path: Path, config_path: Path, counter: Path, full_disk: FullDisk,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Baton's database and checkpoints on a disk that fills while a command runs: nothing of the run's end can
    be stored. The log had three tracebacks of ~100 lines each for it ("recording the outcomes of run 2's effects
    failed", "event 2 failed", "draining thread 2 stopped"), and tried to store "Something went wrong" too. Now one
    line says what is wrong and what to do; once there is room the thread is taken up again and answered, once,
    and the command is not run again."""
    caplog.set_level(logging.INFO)  # the audit log's lines too: none for what the full disk kept from being stored
    monkeypatch.setattr(checkpointer, "CHECKPOINT_ROOM_WAIT_SECONDS", 0.5)  # the run's wait for room, run out
    async with playground(full_disk.path / "baton.db", config_path, BATON_LEASE_SECONDS="3") as http:
        thread = await ask(http, "@baton run slow seconds=9.9")
        await reply_with(http, thread, "Running")  # the command runs: its progress line was delivered
        full_disk.fill()
        slow_release(counter).touch()  # the command ends now; its checkpoint and outcome meet the full disk

        async def drain_stopped() -> list[str]:
            return [record.getMessage() for record in caplog.records if "draining thread" in record.getMessage()]

        stopped = await until(drain_stopped, "the drain to stop on the full disk")
        assert "cannot be written (database or disk is full): free space on the disk" in stopped[0], stopped
        audit_lines = [record.getMessage() for record in caplog.records if record.name == "baton.audit"]
        never_stored = ("run.failed", "effect.done", "request.answered")
        assert not [line for line in audit_lines if line.startswith(never_stored)], audit_lines
        assert not [record for record in caplog.records if record.exc_info], "a traceback for a full disk"

        full_disk.free()
        said = await reply_with(http, thread, "stopped")
        assert "its outcome is unknown, and it was not run again" in said, said
        replies = await bot_replies(http, thread)
        assert sum("stopped" in text for text in replies) == 1, replies
        assert not [record for record in caplog.records if record.exc_info], "a traceback after the disk had room"


async def test_a_run_whose_checkpoint_meets_a_full_disk_waits_for_room_and_goes_on(
        tmp_path: Path, config_path: Path, counter: Path, full_disk: FullDisk,
        caplog: pytest.LogCaptureFixture) -> None:
    """A disk freed within ``CHECKPOINT_ROOM_WAIT_SECONDS`` (30 s, as PostgreSQL's checkpointer waits for its
    database) costs no run: it failed at once, an approved one too, and had to be asked for (and approved) again."""
    caplog.set_level(logging.WARNING)
    (full_disk.path / "checkpoints.db").touch()
    (tmp_path / "baton.checkpoints.db").symlink_to(full_disk.path / "checkpoints.db")
    async with playground(tmp_path / "baton.db", config_path) as http:
        full_disk.fill()
        thread = await ask(http, "@baton run uptime")
        other = await ask(http, "@baton run restart service=web")

        def waits() -> list[str]:
            return [record.getMessage() for record in caplog.records if "waits for room" in record.getMessage()]

        async def waiting_or_answered() -> list[str]:
            return waits() or await bot_replies(http, thread)

        said = await until(waiting_or_answered, "the run to wait for room, or its answer")
        assert "free space on the disk holding Baton's checkpoints file" in said[0], said
        full_disk.free()
        assert "did uptime" in await reply_with(http, thread, "did")
        assert "Approval needed" in await reply_with(http, other, "Approval needed")  # its card, once there is room
        assert (counter.read_text().splitlines(), len(await bot_replies(http, thread))) == (["uptime"], 1)
        assert len(waits()) == 1, waits()  # one line for the runs waiting together, not one per write
        assert not [record for record in caplog.records if record.exc_info], "a traceback for a full disk"


async def test_readyz_says_when_the_disk_of_the_database_is_full_and_when_there_is_room_again(
        full_disk: FullDisk, config_path: Path) -> None:
    """A full disk refused every request with a 503 while ``/readyz`` said 200 (its ``SELECT 1`` reads), so a load
    balancer kept sending them. It names the disk (not its path: ``/readyz`` is open to anyone) until there is room."""
    async with playground(full_disk.path / "baton.db", config_path) as http:
        assert (await http.get("/readyz")).status_code == 200
        full_disk.fill()
        refused = await http.post("/api/messages", json={"channel": "general", "user": "alice", "text": "help"})
        assert refused.status_code == 503, refused.text
        ready = await http.get("/readyz")
        assert ready.status_code == 503, ready.text
        said = ready.json()["problems"]["disk"]
        assert said.startswith("the disk holding Baton's database and its checkpoints file has 0 KB free"), said
        assert str(full_disk.path) not in said, said
        assert (await http.head("/readyz")).status_code == 503
        assert (await http.get("/healthz")).status_code == 200  # a restart would not make room: liveness holds

        full_disk.free()
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["problems"] == {}, ready.text
        assert (await http.post("/api/messages", json={"channel": "general", "user": "alice", "text": "help"})
                ).status_code == 201
