"""``baton.yaml`` read again on SIGHUP, while Baton runs (``Baton.reload_config``).

It was read once, at start: a runbook added, an approver who joined or left, a digest declared took a
restart of every replica. A file that is not valid must not take a running Baton down, nor half change it.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.support import ROOT, BatonProcess, free_port, has_buttons, runs_in, wait_for

HELLO = f"""
  hello:
    description: Says hello.
    command: [{sys.executable!r}, "-c", "print('hello from the new runbook')"]
    risk: low
    timeout: 10
"""
OPS_DIGEST = """
digests:
  - {platform: playground, channel: ops, cron: "0 9 * * 1-5", timezone: Europe/Paris}
"""


def reload(baton: BatonProcess, expected: str) -> None:
    """SIGHUP, then wait for the log line that says how it went (the n-th such line for the n-th signal)."""
    seen = baton.log.read_text().count(expected)
    assert baton.process is not None
    baton.process.send_signal(signal.SIGHUP)
    wait_for(lambda: baton.log.read_text().count(expected) > seen, what=f"{expected!r} in {baton.log}")


def test_sighup_reads_baton_yaml_again_runbooks_approvers_and_digests(start_baton, sqlite_url, config_path,
                                                                      counter) -> None:
    baton = start_baton(sqlite_url)
    pg = baton.client()
    restart = pg.ask("@baton run restart service=web", user="alice")
    card = pg.wait_card(restart)
    assert "approvers: bob (not alice, who asked)" in card["text"]
    unknown = pg.ask("@baton run hello", user="bob")
    pg.wait_reply(unknown, "hello")  # not a runbook yet: the reply names what there is
    assert not any("hello from the new runbook" in m["text"] for m in pg.bot_replies(unknown))

    original = config_path.read_text()
    config_path.write_text(original.replace('approvers: ["alice", "bob"]', 'approvers: ["alice", "carol"]')
                           .replace("runbooks:\n", "runbooks:" + HELLO, 1) + OPS_DIGEST)
    reload(baton, "read again: 8 runbooks, 2 approvers, 1 digests")

    pg.wait_reply(pg.ask("@baton run hello", user="bob"), "hello from the new runbook")
    edited = wait_for(lambda: next((m for m in pg.bot_replies(restart) if m["id"] == card["id"]
                                    and m["revision"] > 1), None), what="the card to name the approvers now")
    assert "approvers: carol (not alice, who asked)" in edited["text"] and has_buttons(edited)
    assert pg.click(card, "bob").status_code == 202
    pg.wait_reply(restart, "Only carol can approve this.", viewer="bob")
    assert runs_in(counter) == []
    assert pg.click(card, "carol").status_code == 202
    pg.wait_reply(restart, "did restart web")
    assert runs_in(counter) == ["restart web"]
    pg.wait_reply(pg.ask("@baton digest list", channel="ops"), "(from baton.yaml)")

    config_path.write_text(original)  # the digest taken out again
    reload(baton, "read again: 7 runbooks, 2 approvers, 0 digests")
    pg.wait_reply(pg.ask("@baton digest list", channel="ops"), "No digests are scheduled in this channel.")


def test_a_file_that_is_not_valid_or_gone_is_refused_and_the_configuration_in_use_stays(
        start_baton, sqlite_url, config_path, counter) -> None:
    baton = start_baton(sqlite_url)
    pg = baton.client()
    original = config_path.read_text()
    config_path.write_text(original.replace("runbooks:\n", "runbooks:" + HELLO, 1))
    reload(baton, "read again")

    broken = original.replace("runbooks:\n", "runbooks:" + HELLO + HELLO, 1)  # hello twice: YAML would keep the last
    config_path.write_text(broken)
    line = broken.splitlines().index("  hello:", broken.splitlines().index("  hello:") + 1) + 1
    reload(baton, "was not read again")
    log = baton.log.read_text()
    assert f"line {line}" in log and "Baton goes on with the configuration it has" in log
    assert "Traceback" not in log
    pg.wait_reply(pg.ask("@baton run hello"), "hello from the new runbook")  # the file before is in use

    config_path.unlink()  # a file that is gone is no empty configuration: every runbook would go with it
    reload(baton, "no such file")
    thread = pg.ask("@baton run uptime")
    pg.wait_reply(thread, "did uptime")
    assert runs_in(counter) == ["uptime"]
    assert baton.process is not None and baton.process.poll() is None


def test_a_terminal_that_hangs_up_stops_baton_and_a_sighup_while_it_is_open_reads_baton_yaml(
        tmp_path: Path, sqlite_url: str, config_path: Path) -> None:
    """SIGHUP is also what a closed terminal sends ``make run``: Baton must stop then, as it did before the
    signal meant anything else, not run on headless holding the port."""
    port = free_port()
    env = {**os.environ, "BATON_DATABASE_URL": sqlite_url, "BATON_CONFIG": str(config_path),
           "BATON_PORT": str(port), "BATON_HOST": "127.0.0.1", "PYTHONPATH": str(ROOT)}
    primary, secondary = os.openpty()
    # setsid -c: a session of its own whose controlling terminal is this one, as a shell's foreground job has
    process = subprocess.Popen(["setsid", "-c", sys.executable, "-m", "bot.cli", "run"], cwd=tmp_path, env=env,
                               stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    output = bytearray()
    done = threading.Event()

    def read() -> None:  # the terminal must be read, or Baton's log fills it and Baton waits
        while not done.is_set():
            if select.select([primary], [], [], 0.1)[0]:
                try:
                    output.extend(os.read(primary, 65536))
                except OSError:
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: b"Application startup complete" in output or process.poll() is not None, 30,
                 "Baton to start in the terminal")
        assert process.poll() is None, output.decode(errors="replace")
        os.kill(process.pid, signal.SIGHUP)
        wait_for(lambda: b"read again" in output, what="baton.yaml read again")
        assert process.poll() is None

        done.set()
        reader.join()
        os.close(primary)  # the terminal hangs up
        assert process.wait(20) is not None
    finally:
        done.set()
        if process.poll() is None:
            process.kill()
            process.wait()
