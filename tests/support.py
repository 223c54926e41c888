"""Test helpers: a real ``baton run`` process, databases, a playground client, and waiting on conditions."""

from __future__ import annotations

import asyncio
import atexit
import inspect
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import httpx
import pytest
from aiohttp import web
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
PG_ADMIN_URL = os.environ.get("BATON_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")

# A test whose subject does not depend on the database (HTTP answers and headers, what a page or a reply says)
# runs on SQLite only. ``database_url``'s two backends are for what storage decides: locks, ids and types,
# several replicas, recovery, clocks. Run twice, the 39 such tests took 247 of the suite's 3,463 worker-seconds.
ON_SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def wait_for(condition: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


async def until(condition: Callable[[], Awaitable[T] | T], what: str = "condition", timeout: float = 20.0) -> T:
    """``wait_for`` for a test on the event loop: call ``condition`` (awaiting what it returns, if awaitable; a
    plain one reads the process's own state) until it gives something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        last = condition()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed and waiting to be reaped, does not)."""
    try:
        os.kill(pid, 0)
        # The process may be reaped between the open and the read of its /proc entry: ESRCH then (CI met it).
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state not in ("Z", "X")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_reachable() -> str | None:
    """``None`` when PostgreSQL answers, else the reason it does not."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means "skip", with the reason
        return f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}".strip()


def create_postgres_database(template: str | None = None, *, drop_later: bool = False
                             ) -> tuple[str, Callable[[], None]]:
    """A new database (a copy of ``template``, a database nobody is connected to), and what drops it.

    ``drop_later``: the drop only stops the Baton processes on it and leaves the ``DROP DATABASE`` to
    ``LATER_DROPS``' thread (PostgreSQL takes 0.7-0.8 s for one here: it flushes its buffers to disk first), so
    that the next test need not wait for it."""
    import psycopg

    name = f"baton_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))

    def drop() -> None:
        # pytest tears fixtures down in the reverse order of the test's arguments: `baton(start_baton,
        # database_url)` dropped the database under a running Baton, whose stop then waited on it.
        BatonProcess.stop_all_on(url)
        if drop_later:
            LATER_DROPS.put(name)
        else:
            drop_postgres_database(name)

    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    return url, drop


def drop_postgres_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class LaterDrops:
    """Test databases dropped one after the other in a thread of this process, while the tests go on;
    ``wait`` (at the end of the session) until every one given is dropped. A drop that fails is raised by
    ``wait``: the test database left behind is named."""

    def __init__(self) -> None:
        self._names: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._failures: list[str] = []

    def put(self, name: str) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._drop_each, name="later-drops", daemon=True)
            self._thread.start()
        self._names.put(name)

    def _drop_each(self) -> None:
        while (name := self._names.get()) is not None:
            try:
                drop_postgres_database(name)
            except Exception as exc:  # noqa: BLE001 - told by wait()
                self._failures.append(f"{name}: {exc}")

    def wait(self) -> None:
        if self._thread is not None:
            self._names.put(None)
            self._thread.join()
            self._thread = None
        if self._failures:
            raise AssertionError(f"test databases not dropped: {self._failures}")


LATER_DROPS = LaterDrops()


class BackgroundServer:
    """An aiohttp app on a free port of 127.0.0.1, served from a thread of its own (the platform fakes).

    Subclasses build the app (``build_app``) and close what they keep open (``close_connections``).
    """

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def build_app(self) -> web.Application:
        raise NotImplementedError

    async def close_connections(self) -> None:
        """Close WebSockets and the like before the server stops."""

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            await self.close_connections()
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self) -> None:
        self._runner = web.AppRunner(self.build_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@dataclass
class Failure:
    """An error a platform fake answers with instead of doing the call."""

    status: int
    times: int
    retry_after: float | None = None
    error: str = "internal_error"
    after: bool = False  # the call is carried out, then answered with the error (its answer lost on the way)


class ScriptedFailures:
    """The failures a fake was told to give, per method or route, in the order given.

    Not locked: the fakes use it under their own lock, together with their record of calls.
    """

    def __init__(self) -> None:
        self._queues: dict[str, list[Failure]] = {}

    def add(self, key: str, failure: Failure) -> None:
        self._queues.setdefault(key, []).append(failure)

    def next(self, key: str) -> Failure | None:
        """The failure for this call of ``key``, if one is due (each counts down its ``times``)."""
        queue = self._queues.get(key)
        if not queue:
            return None
        failure = queue[0]
        failure.times -= 1
        if failure.times <= 0:
            queue.pop(0)
        return failure


class ForkServer:
    """The session's ``tests.forkserver`` process: ``bot.cli`` children without Python's start-up each time.

    One per checkout: another one (an older Baton exported from git) is served by its own ``tests.forkserver``,
    which imported that checkout's code. ``BATON_TEST_FORKSERVER=0`` turns them off (every process is then
    started with ``python -m bot.cli``).
    """

    _shared: ClassVar[dict[Path, ForkServer]] = {}
    _unavailable: ClassVar[set[Path]] = set()
    _lock = threading.Lock()

    def __init__(self, root: Path = ROOT) -> None:
        self._process = subprocess.Popen([sys.executable, "-m", "tests.forkserver"], cwd=root,
                                         env={**os.environ, "PYTHONPATH": str(root)},
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self._process.stdout.readline().strip()  # type: ignore[union-attr]
        if ready != "forkserver ready":
            self._process.kill()
            self._process.wait()
            raise RuntimeError(f"the fork server did not start (it said {ready!r})")
        self._talk = threading.Lock()

    @classmethod
    def shared(cls, root: Path = ROOT) -> ForkServer | None:
        """The fork server of the checkout at ``root``, started on first use; ``None`` when turned off."""
        if os.environ.get("BATON_TEST_FORKSERVER", "1") == "0":
            return None
        with cls._lock:
            if root in cls._unavailable:
                return None
            server = cls._shared.get(root)
            if server is None or server._process.poll() is not None:
                try:
                    server = cls._shared[root] = cls(root)
                except RuntimeError as exc:  # e.g. an import started a thread: start processes the plain way
                    warnings.warn(f"{exc}; every process of {root} is started with python -m bot.cli", stacklevel=2)
                    cls._unavailable.add(root)
                    return None
                if len(cls._shared) == 1:
                    atexit.register(cls.stop_shared)
            return server

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._talk:
            self._process.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
            self._process.stdin.flush()  # type: ignore[union-attr]
            return dict(json.loads(self._process.stdout.readline()))  # type: ignore[union-attr]

    def spawn(self, args: list[str], *, cwd: Path, env: dict[str, str], stdout: Path,
              stderr: Path | None = None) -> ForkedProcess:
        """``python -m bot.cli <args>``, forked; ``stderr`` ``None``: into ``stdout``'s file."""
        pid = int(self._ask({"spawn": {"args": args, "cwd": str(cwd), "env": env, "stdout": str(stdout),
                                       "stderr": None if stderr is None else str(stderr)}})["pid"])
        return ForkedProcess(self, pid)

    def returncode_of(self, pid: int) -> int:
        return int(self._ask({"wait": pid})["returncode"])

    @classmethod
    def stop_shared(cls) -> None:
        for root, server in list(cls._shared.items()):
            server._process.stdin.close()  # type: ignore[union-attr]
            server._process.wait(10)
            del cls._shared[root]


class ForkedProcess:
    """A fork server's child, with the part of ``subprocess.Popen`` the tests use."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self._server = server
        self.pid = pid
        self._ended = os.pidfd_open(pid)  # readable once the child has ended, though it is not our child
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.wait(0) if self.returncode is None else self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is not None:
            return self.returncode
        readable, _, _ = select.select([self._ended], [], [], timeout)
        if not readable:
            if timeout:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            return None
        self.returncode = self._server.returncode_of(self.pid)
        os.close(self._ended)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


OVERRIDES = "BATON_TEST_OVERRIDES"  # read by tests.forkserver.apply_overrides, in the child
PAUSE_SCALES = "BATON_TEST_PAUSE_SCALES"  # read by tests.forkserver.apply_pause_scales, in the child


def overrides(constants: dict[str, Any]) -> dict[str, str]:
    """The environment that sets these module constants (``{"adapters.slack.SOCKET_CONNECT_SECONDS": 3.0}``) in a
    ``bot.cli`` process started with it: a ``monkeypatch`` of Baton's own pauses for a test's ``baton run``."""
    return {OVERRIDES: json.dumps(constants)}


def quicker_library_pauses(scales: dict[str, float]) -> dict[str, str]:
    """The environment that makes every ``asyncio.sleep`` of these library modules that many times as long
    (``{"discord.webhook.async_": 0.1}``) in a ``bot.cli`` process started with it: the library's tries and
    their order stay the same, the test does not wait out its pauses."""
    return {PAUSE_SCALES: json.dumps(scales)}


def _cli_command(env: dict[str, str]) -> list[str]:
    """``python -m bot.cli``, or, with overrides, ``tests.forkserver``'s way of applying them first."""
    if env.get(OVERRIDES) or env.get(PAUSE_SCALES):
        return [sys.executable, "-m", "tests.forkserver", "--cli"]
    return [sys.executable, "-m", "bot.cli"]


def run_cli(*args: str, cwd: Path, env: dict[str, str], timeout: float = 60,
            code: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``python -m bot.cli <args>`` to its end (through the fork server when it is on); its output as text.

    ``code``: the checkout whose ``bot.cli`` runs (another one: with ``env``'s ``PYTHONPATH`` naming it)."""
    server = ForkServer.shared(code)
    if server is None:
        return subprocess.run([*_cli_command(env), *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="baton-cli-") as directory:
        stdout, stderr = Path(directory) / "stdout", Path(directory) / "stderr"
        process = server.spawn(list(args), cwd=cwd, env=env, stdout=stdout, stderr=stderr)
        try:
            returncode = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        return subprocess.CompletedProcess(["baton", *args], int(returncode or 0), stdout.read_text(),
                                           stderr.read_text())


START_WAIT_SECONDS = 90.0  # a test's ``baton run`` to answer /healthz


class BatonProcess:
    """``baton run`` in its own process, as a user would start it."""

    running: ClassVar[set[BatonProcess]] = set()

    @classmethod
    def stop_all_on(cls, database_url: str) -> None:
        """Stop the running processes on that database (by its name: the URL may go through a proxy)."""
        name = make_url(database_url).database
        for process in [process for process in cls.running if make_url(process.database_url).database == name]:
            process.stop()

    def __init__(self, database_url: str, config: Path, workdir: Path, name: str = "baton",
                 env: dict[str, str] | None = None, *, exec_: bool = False, code: Path = ROOT) -> None:
        """``exec_``: start it with ``python -m bot.cli run`` even when the fork server is on. ``code``: the
        checkout whose ``baton run`` it is (another one: with ``env``'s ``PYTHONPATH`` naming it)."""
        self.code = code
        self.extra_env = env or {}
        self.database_url = database_url
        self.config = config
        self.workdir = workdir
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"{name}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | ForkedProcess | None = None
        self.exec_ = exec_

    def start(self) -> BatonProcess:
        env = {**os.environ, "BATON_DATABASE_URL": self.database_url, "BATON_CONFIG": str(self.config),
               "BATON_PORT": str(self.port), "BATON_HOST": "127.0.0.1", "BATON_INSTANCE_NAME": f"{self.name}-{self.port}",
               "PYTHONPATH": str(ROOT),  # so BATON_MODEL=python:tests.fake_models:... can be imported
               **self.extra_env}
        server = None if self.exec_ else ForkServer.shared(self.code)
        if server is not None:
            self.process = server.spawn(["run"], cwd=self.workdir, env=env, stdout=self.log)
        else:
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen([*_cli_command(env), "run"], cwd=self.workdir, env=env,
                                                stdout=log, stderr=subprocess.STDOUT)
        BatonProcess.running.add(self)
        # A dead process fails at once (``_healthy``); one started with exec imports everything first: ~6 s on a
        # quiet machine, past 30 s with the suite's workers and other work on 2 cores.
        wait_for(self._healthy, START_WAIT_SECONDS, f"{self.name} to answer /healthz (log: {self.log})")
        return self

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        BatonProcess.running.discard(self)
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def client(self) -> Playground:
        return Playground(self.url)


class Playground:
    """The playground's JSON API, as the page and the tests use it."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=15)

    def say(self, text: str, *, user: str = "alice", channel: str = "general", thread: str | None = None,
            event_id: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"channel": channel, "user": user, "text": text}
        if thread is not None:
            body["thread_id"] = thread
        if event_id is not None:
            body["event_id"] = event_id
        return self.http.post("/api/messages", json=body)

    def ask(self, text: str, **kwargs: Any) -> str:
        """Post a top-level message; return its thread id."""
        response = self.say(text, **kwargs)
        assert response.status_code == 201, response.text
        return str(response.json()["thread_id"])

    def click(self, card: dict[str, Any], user: str, action: str = "approve", event_id: str | None = None) -> httpx.Response:
        body = {"message_id": card["id"], "approval_id": approval_id(card), "action": action, "user": user}
        if event_id is not None:
            body["event_id"] = event_id
        return self.http.post("/api/clicks", json=body)

    def replies(self, thread: str, viewer: str | None = None) -> list[dict[str, Any]]:
        params = {"viewer": viewer} if viewer else {}
        response = self.http.get(f"/api/threads/{thread}/messages", params=params)
        assert response.status_code == 200, response.text
        return list(response.json()["replies"])

    def bot_replies(self, thread: str, viewer: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.replies(thread, viewer) if m["is_bot"]]

    def wait_reply(self, thread: str, contains: str, viewer: str | None = None, timeout: float = 20) -> dict[str, Any]:
        return wait_for(lambda: next((m for m in self.bot_replies(thread, viewer) if contains in m["text"]), None),
                        timeout, f"a reply containing {contains!r} in thread {thread}")

    def wait_card(self, thread: str, timeout: float = 20) -> dict[str, Any]:
        return wait_for(lambda: next((m for m in self.bot_replies(thread) if has_buttons(m)), None),
                        timeout, f"an approval card in thread {thread}")


def approval_id(card: dict[str, Any]) -> str:
    return next(p["approval_id"] for p in card["content"]["parts"] if p["kind"] == "buttons")


def has_buttons(message: dict[str, Any]) -> bool:
    return any(p["kind"] == "buttons" for p in message["content"]["parts"])


LONG_LINES = 3000


def long_line(number: int) -> str:
    return f"line {number:05d} " + "x" * 40


def slow_release(counter: Path) -> Path:
    """The file that ends a running ``slow`` command of the config written with ``counter`` at once."""
    return counter.with_name("slow.release")


def write_config(directory: Path, counter: Path, approvers: list[str] | None = None) -> Path:
    """A baton.yaml whose runbooks count their executions in ``counter`` (one line per run).

    ``approvers`` replaces alice and bob (platform tests use their platform's user ids); the
    ``long`` runbook prints ``LONG_LINES`` lines of ``long_line`` (output too long for a message).
    """
    python = sys.executable
    long_script = f"for i in range({LONG_LINES}): print('line %05d ' % i + 'x' * 40)"
    script = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n'); print('did', sys.argv[2])"
    # Sleeps its seconds, or until a test creates ``slow_release(counter)``: a test that needs the command to
    # outlast something (a takeover) without a guess at how long that takes gives it 9.9 s and then lets it go.
    slow_script = ("import os, sys, time; end = time.monotonic() + float(sys.argv[1])\n"
                   "while time.monotonic() < end and not os.path.exists(sys.argv[2]): time.sleep(0.02)\n"
                   "print('sl' + 'ept')")  # "slept" is in its output, not in the command a progress line shows
    hang_script = ("import subprocess, sys, time; child = subprocess.Popen(['sleep', '60']); "
                   "open(sys.argv[1], 'w').write(str(child.pid)); print('waiting', flush=True); time.sleep(60)")
    config = directory / "baton.yaml"
    config.write_text(f"""
approvers: {json.dumps(approvers or ["alice", "bob"])}
runbooks:
  uptime:
    description: Host uptime.
    command: [{python!r}, "-c", {script!r}, {str(counter)!r}, "uptime"]
    risk: low
    timeout: 10
  restart:
    description: Restart a service.
    command: [{python!r}, "-c", {script!r}, {str(counter)!r}, "restart {{service}}"]
    args:
      service:
        pattern: "^(web|api|worker)$"
        description: one of web, api, worker
    risk: high
    timeout: 20
  slow:
    description: Takes a moment, to see queueing.
    command: [{python!r}, "-c", {slow_script!r}, "{{seconds}}", {str(slow_release(counter))!r}]
    args:
      seconds:
        pattern: "^[0-9](\\\\.[0-9])?$"
    risk: low
    timeout: 20
  long:
    description: Prints a lot.
    command: [{python!r}, "-c", {long_script!r}]
    risk: low
    timeout: 10
  fails:
    description: Exits with status 3.
    command: [{python!r}, "-c", "import sys; print('disk full'); sys.exit(3)"]
    risk: low
    timeout: 10
  hang:
    description: Starts a child that outlives it, then hangs; the child's pid goes to {{pidfile}}.
    command: [{python!r}, "-c", {hang_script!r}, "{{pidfile}}"]
    args:
      pidfile:
        pattern: "^[A-Za-z0-9_./-]+$"
    risk: low
    timeout: 1
  missing:
    description: A program that is not installed.
    command: ["/nonexistent/baton-test-tool", "--version"]
    risk: low
    timeout: 10
""")
    return config


def runs_in(counter: Path) -> list[str]:
    return counter.read_text().splitlines() if counter.exists() else []


@contextmanager
def serving_guarded(app: Any) -> Iterator[int]:
    """uvicorn serving the ASGI ``app`` through ``bot.server.GuardedHttpProtocol``, in a thread; its port."""
    import uvicorn

    from bot.server import GuardedHttpProtocol

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, http=GuardedHttpProtocol, log_level="warning", loop="asyncio",
                                           lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[listening])), daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10, "the server")
    try:
        yield listening.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
