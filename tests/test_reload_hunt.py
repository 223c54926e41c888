"""Hunting ``baton.yaml`` read again on SIGHUP (``Baton.reload_config``, ``bot.cli._server``) with real
``baton run`` processes: signals at awkward times, files that change under a run waiting for approval,
files that cannot be read, and the terminal check (``terminal_hung_up``) without a terminal at all.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.support import ROOT, BatonProcess, Playground, free_port, runs_in, wait_for
from tests.test_config_reload import HELLO



def reload(baton: BatonProcess, expected: str) -> str:
    """SIGHUP, then wait for the log line that says how it went (the n-th such line for the n-th signal)."""
    seen = baton.log.read_text().count(expected)
    assert baton.process is not None
    baton.process.send_signal(signal.SIGHUP)
    wait_for(lambda: baton.log.read_text().count(expected) > seen, what=f"{expected!r} in {baton.log}")
    return baton.log.read_text()


def env_for(database_url: str, config_path: Path, port: int) -> dict[str, str]:
    return {**os.environ, "BATON_DATABASE_URL": database_url, "BATON_CONFIG": str(config_path),
            "BATON_PORT": str(port), "BATON_HOST": "127.0.0.1", "PYTHONPATH": str(ROOT)}


class Own:
    """A ``baton run`` this test starts itself (``python -m bot.cli run``), with the stdin and session it chooses."""

    def __init__(self, tmp_path: Path, database_url: str, config_path: Path, **popen: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"own-{self.port}.log"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "bot.cli", "run"], cwd=tmp_path,
                                            env=env_for(database_url, config_path, self.port),
                                            stdout=popen.pop("stdout", log), stderr=popen.pop("stderr", log),
                                            **popen)  # type: ignore[call-overload]

    def healthy(self) -> bool:
        import httpx

        if self.process.poll() is not None:
            raise AssertionError(f"baton exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self) -> None:
        wait_for(self.healthy, 30, f"baton to answer /healthz (log: {self.log})")

    def client(self) -> Playground:
        return Playground(self.url)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def own(tmp_path: Path) -> Iterator:
    started: list[Own] = []

    def start(*args: object, **kwargs: object) -> Own:
        process = Own(tmp_path, *args, **kwargs)  # type: ignore[arg-type]
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


# -- the terminal check: no terminal at all (a supervisor), stdin from /dev/null, a pipe, closed ------------------

@pytest.mark.parametrize("stdin", ["devnull", "pipe", "closed"])
def test_without_a_terminal_a_sighup_reads_baton_yaml_again_and_never_stops_baton(
        own, tmp_path: Path, sqlite_url: str, config_path: Path, stdin: str) -> None:
    """Under a supervisor (systemd, a container) there is no terminal: every SIGHUP is a reload."""
    popen: dict[str, object] = {"start_new_session": True}  # no controlling terminal, as under systemd
    if stdin == "devnull":
        popen["stdin"] = subprocess.DEVNULL
    elif stdin == "pipe":
        popen["stdin"] = subprocess.PIPE
    else:
        popen["stdin"] = subprocess.DEVNULL
        popen["preexec_fn"] = lambda: os.close(0)
    baton = own(sqlite_url, config_path, **popen)
    baton.wait_healthy()
    config_path.write_text(config_path.read_text().replace("runbooks:\n", "runbooks:" + HELLO, 1))
    for number in range(1, 4):
        baton.process.send_signal(signal.SIGHUP)
        wait_for(lambda: baton.log.read_text().count("read again: 8 runbooks") >= number, what="a reload")
    assert baton.process.poll() is None
    pg = baton.client()
    pg.wait_reply(pg.ask("@baton run hello"), "hello from the new runbook")
    assert "Traceback" not in baton.log.read_text()


# -- a SIGHUP while Baton starts ---------------------------------------------------------------------------------

class GatedProxy:
    """A TCP proxy to PostgreSQL that holds every connection until ``open()``: Baton, starting, waits there."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connected = threading.Event()
        self.gate = threading.Event()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database_url: str) -> str:
        return database_url.replace("127.0.0.1:5432", f"127.0.0.1:{self.port}", 1)

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connected.set()
            threading.Thread(target=self._carry, args=(client,), daemon=True).start()

    def _carry(self, client: socket.socket) -> None:
        self.gate.wait(60)
        server = socket.create_connection(self.target)

        def pump(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for end in (source, sink):
                    try:
                        end.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(client, server), daemon=True).start()
        pump(server, client)

    def close(self) -> None:
        self.closed = True
        self.gate.set()
        self.listener.close()


@pytest.mark.postgres
def test_a_sighup_while_baton_starts_does_not_kill_it(own, postgres_url: str, config_path: Path) -> None:
    proxy = GatedProxy()
    try:
        baton = own(proxy.url(postgres_url), config_path, stdin=subprocess.DEVNULL, start_new_session=True)
        assert proxy.connected.wait(30), "Baton never reached its database"  # it is migrating: starting
        baton.process.send_signal(signal.SIGHUP)
        proxy.gate.set()
        baton.wait_healthy()  # the bug: "baton exited with -1" (killed by SIGHUP)
        wait_for(lambda: "read again" in baton.log.read_text(), what="the SIGHUP answered in the log")
        assert baton.process.poll() is None
    finally:
        proxy.close()


# -- a terminal that hung up long ago, and a SIGHUP meant as a reload -----------------------------------------------

def test_a_terminal_that_hung_up_long_ago_does_not_turn_a_later_reload_into_a_stop(
        own, sqlite_url: str, config_path: Path) -> None:
    """``baton run >baton.log 2>&1 & disown`` in an ssh session, the session closed: Baton gets no SIGHUP (it is
    not in the terminal's foreground) and runs on, its stdin the dead terminal. A week later the operator
    changes baton.yaml and sends ``kill -HUP``: that is a reload, not a hang-up."""
    primary, secondary = os.openpty()
    # a session of its own and no controlling terminal: the hang-up sends it nothing, as for a disowned job
    baton = own(sqlite_url, config_path, stdin=secondary, start_new_session=True)
    os.close(secondary)
    try:
        baton.wait_healthy()
    finally:
        os.close(primary)  # the terminal closes (Baton's stdin now answers EIO)
    pg = baton.client()
    pg.wait_reply(pg.ask("@baton run uptime"), "did uptime")  # it runs on after the hang-up
    config_path.write_text(config_path.read_text().replace("runbooks:\n", "runbooks:" + HELLO, 1))
    baton.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "read again" in baton.log.read_text() or baton.process.poll() is not None,
             what="a reload or a stop")
    assert baton.process.poll() is None, "a reload stopped Baton"


# -- a run waiting for approval while baton.yaml changes --------------------------------------------------------------

@pytest.mark.parametrize("change", ["command", "removed", "pattern"])
def test_an_approval_after_a_reload_runs_only_the_command_its_card_showed(
        start_baton, sqlite_url: str, config_path: Path, counter: Path, change: str) -> None:
    baton = start_baton(sqlite_url)
    pg = baton.client()
    thread = pg.ask("@baton run restart service=web", user="alice")
    card = pg.wait_card(thread)
    original = config_path.read_text()
    if change == "command":
        changed = original.replace('"restart {service}"', '"restart {service} --now"')
        expected = "it would now run"
    elif change == "removed":
        start = original.index("  restart:")
        changed = original[:start] + original[original.index("  slow:"):]
        expected = "is no longer in baton.yaml"
    else:
        changed = original.replace("^(web|api|worker)$", "^(api|worker)$")
        expected = "does not match the allowed pattern"
    assert changed != original
    config_path.write_text(changed)
    reload(baton, "read again")
    assert pg.click(card, "bob").status_code == 202
    reply = pg.wait_reply(thread, "nothing was run")
    assert expected in reply["text"], reply["text"]
    assert runs_in(counter) == []


def test_graph_policies_read_again_reach_help_the_next_request_and_a_waiting_card(
        start_baton, sqlite_url: str, config_path: Path) -> None:
    baton = start_baton(sqlite_url)
    pg = baton.client()
    helped = pg.wait_reply(pg.ask("@baton help"), "Here is what I can do")
    assert any("announce" in line and "(needs approval)" in line for line in helped["text"].splitlines())
    waiting = pg.ask("@baton announce Maintenance at ten", user="alice")
    card = pg.wait_card(waiting)
    assert "bob" in card["text"]

    config_path.write_text(config_path.read_text() + "graphs:\n  announce: {risk: low, approvers: [carol]}\n")
    reload(baton, "read again")
    helped = pg.wait_reply(pg.ask("@baton help"), "Here is what I can do")
    line = next(line for line in helped["text"].splitlines() if "announce" in line)
    assert "(needs approval)" not in line, line
    edited = wait_for(lambda: next((m for m in pg.bot_replies(waiting) if m["id"] == card["id"]
                                    and m["revision"] > 1), None), what="the waiting card edited")
    assert "carol" in edited["text"] and "bob" not in edited["text"], edited["text"]
    fresh = pg.ask("@baton announce Lunch at noon", user="carol")
    fresh_card = pg.wait_card(fresh)
    assert pg.click(fresh_card, "carol").status_code == 202  # low risk now: the requester may approve
    pg.wait_reply(fresh, "approved by carol")


# -- signals in a burst, and during a graceful stop -----------------------------------------------------------------

def test_a_burst_of_sighups_while_the_file_changes_ends_with_the_last_file_in_use(
        start_baton, sqlite_url: str, config_path: Path) -> None:
    baton = start_baton(sqlite_url)
    pg = baton.client()
    original = config_path.read_text()
    with_hello = original.replace("runbooks:\n", "runbooks:" + HELLO, 1)
    assert baton.process is not None
    for number in range(40):
        config_path.write_text(with_hello if number % 2 else original)
        baton.process.send_signal(signal.SIGHUP)
    config_path.write_text(with_hello)
    baton.process.send_signal(signal.SIGHUP)  # the last one: the file with hello
    wait_for(lambda: baton.log.read_text().rstrip().splitlines()[-1:] and "read again: 8 runbooks"
             in baton.log.read_text().rstrip().splitlines()[-1], what="the last reload to read the last file")
    pg.wait_reply(pg.ask("@baton run hello"), "hello from the new runbook")
    log = baton.log.read_text()
    assert "Traceback" not in log  # a read between a write's truncation and its text may be refused, not more
    assert baton.process.poll() is None


def test_a_sighup_during_a_graceful_stop_is_refused_and_baton_still_stops(
        start_baton, sqlite_url: str, config_path: Path) -> None:
    baton = start_baton(sqlite_url)
    pg = baton.client()
    pg.ask("@baton run slow seconds=3")
    # The command under way (its ledger entry): the stop's grace waits for it, and the SIGHUP comes meanwhile.
    # (The log says nothing of it at INFO, and the first reply is its end: the test waited for the run to end,
    # 6 s, and stopped a Baton with nothing left to wait for.)
    wait_for(lambda: _started_effects(sqlite_url), what="the slow run to start")
    assert baton.process is not None
    baton.process.send_signal(signal.SIGTERM)
    wait_for(lambda: "Shutting down" in baton.log.read_text(), what="the graceful stop to begin")
    baton.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "was not read again: Baton is starting or stopping" in baton.log.read_text()
             or baton.process.poll() is not None, what="the SIGHUP refused")
    returncode = baton.process.wait(30)
    log = baton.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert returncode in (0, -signal.SIGTERM), (returncode, log[-2000:])
    assert "baton.yaml read again:" not in log


def _started_effects(sqlite_url: str) -> int:
    with closing(sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))) as db:
        return int(db.execute("SELECT count(*) FROM effects WHERE status = 'started'").fetchone()[0])


# -- files that cannot be read, or are replaced ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["directory", "not utf-8"])
def test_a_file_that_cannot_be_read_is_refused_with_its_reason_and_baton_goes_on(
        start_baton, sqlite_url: str, config_path: Path, counter: Path, kind: str) -> None:
    baton = start_baton(sqlite_url)
    original = config_path.read_text()
    if kind == "directory":
        config_path.unlink()
        config_path.mkdir()
        reason = "cannot be read: Is a directory"
    else:
        config_path.write_bytes(original.encode().replace(b"Host uptime.", b"Host \xff uptime."))
        line = original[:original.index("Host uptime.")].count("\n") + 1
        reason = f"line {line}: not UTF-8 text (byte 0xff)"
    log = reload(baton, "was not read again")
    assert reason in log and "Traceback" not in log
    pg = baton.client()
    pg.wait_reply(pg.ask("@baton run uptime"), "did uptime")
    assert runs_in(counter) == ["uptime"]


@pytest.mark.parametrize("how", ["mv", "symlink swap"])
def test_a_file_replaced_atomically_is_read_again(start_baton, sqlite_url: str, config_path: Path,
                                                  tmp_path: Path, how: str) -> None:
    """``mv new baton.yaml`` (an editor's save, a deploy) and a swapped symlink (a Kubernetes ConfigMap)."""
    original = config_path.read_text()
    if how == "symlink swap":
        (tmp_path / "v1").mkdir()
        (tmp_path / "v1" / "baton.yaml").write_text(original)
        config_path.unlink()
        config_path.symlink_to(tmp_path / "v1" / "baton.yaml")
    baton = start_baton(sqlite_url)
    pg = baton.client()
    if how == "mv":
        (tmp_path / "new.yaml").write_text(original.replace("runbooks:\n", "runbooks:" + HELLO, 1))
        os.replace(tmp_path / "new.yaml", config_path)
    else:
        (tmp_path / "v2").mkdir()
        (tmp_path / "v2" / "baton.yaml").write_text(original.replace("runbooks:\n", "runbooks:" + HELLO, 1))
        (tmp_path / "next").symlink_to(tmp_path / "v2" / "baton.yaml")
        os.replace(tmp_path / "next", config_path)
    reload(baton, "read again: 8 runbooks")
    pg.wait_reply(pg.ask("@baton run hello"), "hello from the new runbook")


def test_an_empty_file_read_again_is_refused_as_a_file_that_is_gone(
        start_baton, sqlite_url: str, config_path: Path, counter: Path) -> None:
    baton = start_baton(sqlite_url)
    config_path.write_text("")
    log = reload(baton, "read again")  # "was not read again" or "read again: 0 runbooks"
    assert "read again: 0 runbooks" not in log, "the empty file was taken"
    pg = baton.client()
    pg.wait_reply(pg.ask("@baton run uptime"), "did uptime")


def waits_on_a_pipe(pid: int) -> bool:
    """Whether a thread of ``pid`` is opening a named pipe, waiting for a writer (Linux: its wchan)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "wchan").read_text().strip() == "wait_for_partner":
                return True
        except OSError:
            pass
    return False


def test_a_file_that_blocks_its_reader_does_not_stop_every_later_reload(
        start_baton, sqlite_url: str, config_path: Path) -> None:
    baton = start_baton(sqlite_url)
    original = config_path.read_text()
    config_path.unlink()
    os.mkfifo(config_path)
    assert baton.process is not None
    baton.process.send_signal(signal.SIGHUP)
    wait_for(lambda: waits_on_a_pipe(baton.process.pid) or "yaml was not read again" in baton.log.read_text(),
             what="the reload to open the pipe (or refuse it)")
    config_path.unlink()  # the operator puts a regular file back and signals again
    config_path.write_text(original.replace("runbooks:\n", "runbooks:" + HELLO, 1))
    reload(baton, "read again: 8 runbooks")


def test_the_refusal_in_the_log_shows_no_control_character_from_the_file(
        start_baton, sqlite_url: str, config_path: Path) -> None:
    baton = start_baton(sqlite_url)
    config_path.write_text(config_path.read_text().replace(
        'pattern: "^(web|api|worker)$"', 'pattern: "^(web|api|worker)$"\n        default: "\\e]0;owned\\a\\e[2J"', 1))
    log = reload(baton, "was not read again")
    refusal = next(line for line in log.splitlines() if "was not read again" in line)
    assert "does not match the pattern" in refusal
    assert "\x1b" not in refusal and "\x07" not in refusal, repr(refusal)


# -- prices and digests ----------------------------------------------------------------------------------------------

def test_model_prices_read_again_price_the_next_run(start_baton, sqlite_url: str, config_path: Path,
                                                    tmp_path: Path) -> None:
    import sqlite3

    from tests.fake_models import script
    from tests.test_models import MODEL, guess

    prices = '\nmodels:\n  prices:\n    "{model}": {{input: {input}, output: {output}}}\n'
    original = config_path.read_text()
    config_path.write_text(original + prices.format(model=MODEL, input=1.0, output=2.0))
    env = script(tmp_path / "script.json", [guess("status", 0.93), guess("status", 0.93)])
    baton = start_baton(sqlite_url, env=env)
    pg = baton.client()
    pg.wait_reply(pg.ask("@baton what is going on in here?"), "Nothing is running or waiting")
    config_path.write_text(original + prices.format(model=MODEL, input=10.0, output=20.0))
    reload(baton, "read again")
    pg.wait_reply(pg.ask("@baton and what is going on now?"), "Nothing is running or waiting")

    def costs() -> list[float | None]:
        with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as db:
            return [cost for (cost,) in db.execute("SELECT cost FROM runs WHERE graph = 'status' ORDER BY id")]

    assert wait_for(lambda: len(costs()) == 2 and all(costs()) and costs()) == [
        pytest.approx(120 / 1_000_000), pytest.approx(1200 / 1_000_000)]


@pytest.mark.postgres
def test_a_digest_changed_and_removed_on_one_replica_reaches_the_other_through_the_database(
        start_baton, postgres_url: str, config_path: Path) -> None:
    """Each replica reads its own copy; the schedules themselves live in the database, so a replica not signalled
    lists (and, at its next reconcile, fires) what the signalled one wrote."""
    signalled, other = start_baton(postgres_url, name="a"), start_baton(postgres_url, name="b")
    original = config_path.read_text()
    digest = '\ndigests:\n  - {{platform: playground, channel: ops, cron: "{cron}", timezone: {zone}}}\n'
    pg = other.client()

    def listing_on_the_other(*wanted: str) -> str:
        """``digest list`` asked of the replica not signalled until it says all of ``wanted`` (the log line
        "read again" comes before the schedules are written)."""
        def listed() -> str | None:
            reply = str(pg.wait_reply(pg.ask("@baton digest list", channel="ops"), "")["text"])
            return reply if all(part in reply for part in wanted) else None
        return wait_for(listed, what=f"the other replica to list {wanted}")

    config_path.write_text(original + digest.format(cron="0 9 * * 1-5", zone="Europe/Paris"))
    reload(signalled, "read again: 7 runbooks, 2 approvers, 1 digests")
    listing_on_the_other("(from baton.yaml)", "Europe/Paris")

    config_path.write_text(original + digest.format(cron="30 17 * * 5", zone="America/New_York"))
    reload(signalled, "read again: 7 runbooks, 2 approvers, 1 digests")
    listed = listing_on_the_other("America/New_York")
    assert "Europe/Paris" not in listed and listed.count("from baton.yaml") == 1, listed

    config_path.write_text(original)
    reload(signalled, "read again: 7 runbooks, 2 approvers, 0 digests")
    listing_on_the_other("No digests are scheduled in this channel.")
    assert "Traceback" not in signalled.log.read_text() + other.log.read_text()


def test_the_refusal_in_the_log_names_the_line_and_not_a_secret_the_file_holds(
        start_baton, sqlite_url: str, config_path: Path) -> None:
    """A provider's key pasted into baton.yaml by mistake (here as a default its pattern refuses): the refusal
    quotes the value, and the log keeps Baton's secrets out of it as everywhere else."""
    key = "sk-reload-hunt-0123456789abcdef"
    baton = start_baton(sqlite_url, env={"OPENAI_API_KEY": key})
    changed = config_path.read_text().replace(
        'pattern: "^(web|api|worker)$"', f'pattern: "^(web|api|worker)$"\n        default: "{key}"', 1)
    config_path.write_text(changed)
    line = changed.splitlines().index(f'        default: "{key}"') + 1
    log = reload(baton, "was not read again")
    refusal = next(text for text in log.splitlines() if "was not read again" in text)
    assert f"line {line}:" in refusal and "does not match the pattern" in refusal, refusal
    assert key not in log and "Traceback" not in log
