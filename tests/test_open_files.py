"""A ``baton run`` that runs out of open files (``ulimit -n``) under a burst of requests.

asyncio logged every failed ``accept()`` with its traceback, and went on trying through uvicorn's whole backlog
each time (CPython gh-151615): 90,059 tracebacks (540,736 log lines) in 15 s for a burst of 60 requests with
``ulimit -n 28``, a log that fills a small disk in its turn. Now it is one line a minute naming the limit and what
to raise; the connections wait in the kernel's queue and every request is taken and answered once.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.server import OutOfFiles, accept_without_spinning
from tests.support import until, wait_for

BURST = 60


def test_a_burst_past_the_open_files_limit_is_one_log_line_and_every_request_is_answered_once(
        start_baton: Any, sqlite_url: str) -> None:
    baton = start_baton(sqlite_url)
    pid = baton.process.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    try:  # a few more than it holds idle: the burst's connections run out of them
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")) + 10, hard))
    except OSError as exc:
        pytest.skip(f"the open files limit of baton run cannot be set here (prlimit): {exc}")
    answers: list[httpx.Response] = []

    def ask(number: int) -> None:
        answers.append(httpx.post(f"{baton.url}/api/messages", timeout=60, json={
            "channel": "general", "user": "alice", "text": "@baton run uptime force", "event_id": f"burst-{number}"}))

    askers = [threading.Thread(target=ask, args=(number,)) for number in range(BURST)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join(90)
    assert sorted(answer.status_code for answer in answers) == [201] * BURST, [a.text for a in answers][:3]
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))  # room again: what could not start is answered

    pg = baton.client()
    threads = [answer.json()["thread_id"] for answer in answers]
    wait_for(lambda: all(pg.bot_replies(thread) for thread in threads), 60, "every request answered")
    for thread in threads:
        assert len(pg.bot_replies(thread)) == 1, pg.bot_replies(thread)  # once ("did uptime", or could not start)

    log = Path(baton.log).read_text()
    assert "Traceback" not in log, f"{log.count('out of system resource'):,} failed accepts logged, each a traceback"
    said = [line for line in log.splitlines() if "Baton cannot take new connections" in line]
    assert len(said) == 1, said
    assert "Too many open files (its limit: " in said[0] and "ulimit -n" in said[0], said


class RefusingSocket(socket.socket):
    """A listening socket whose every ``accept()`` fails for want of files, counting the tries."""

    tries = 0

    def accept(self) -> Any:
        self.tries += 1
        raise OSError(errno.EMFILE, "Too many open files")


async def test_a_round_of_accept_ends_at_its_first_failure_for_want_of_files(
        caplog: pytest.LogCaptureFixture) -> None:
    """asyncio's loop went on through the whole backlog after such a failure, each try scheduling a retry of its
    own: the retries multiplied (4.4 million tries in a minute, with ``ulimit -n 40`` and 30 open event streams,
    the event loop busy with them). Now a round makes one try and schedules one retry."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(OutOfFiles(previous))
    accept_without_spinning(loop)
    listening = RefusingSocket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    server = await loop.create_server(asyncio.Protocol, sock=listening, backlog=100)
    try:
        with socket.create_connection(listening.getsockname()):  # waits in the kernel's queue: readable now
            await until(lambda: asyncio.sleep(0, listening.tries), "a try to accept it")
            assert listening.tries == 1  # a round runs in one go: it is over
            retries = [handle for handle in loop._scheduled  # type: ignore[attr-defined]
                       if getattr(handle, "_callback", None) == loop._start_serving]  # type: ignore[attr-defined]
            assert len(retries) == 1, len(retries)
        said = [record.getMessage() for record in caplog.records
                if "cannot take new connections" in record.getMessage()]
        assert len(said) == 1 and "ulimit -n" in said[0], said
    finally:
        server.close()
        loop.set_exception_handler(previous)
        loop.__dict__.pop("_accept_connection", None)
