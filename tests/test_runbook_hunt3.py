"""Runbook commands, third hunt: what a timeout or a stop leaves running."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from graphs.runbook import run_command
from tests.support import alive, wait_for

# A descendant in a process group of its own, as GNU timeout(1) makes one (`timeout 300 ./migrate.sh` in a
# deploy script), and as a shell's job control (`set -m`) makes one for each background job: still in the
# command's session.
OWN_GROUP = "import os, sys, time; os.setpgid(0, 0); open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"


def _started(pidfile: Path) -> bool:
    return pidfile.exists() and bool(pidfile.read_text().strip())


@pytest.mark.parametrize("how", ["timeout", "stop"])
def test_a_descendant_in_a_group_of_its_own_is_stopped_with_the_command(tmp_path: Path, how: str) -> None:
    """At its timeout (or when Baton stopped the run) only the command's process group was signalled: a
    descendant in a group of its own ran on, after the thread was told the command "timed out ... and was
    stopped"."""
    pidfile = tmp_path / "descendant"
    command = ["sh", "-c", f'"{sys.executable}" -c "{OWN_GROUP}" {pidfile} & wait']

    async def stopped_mid_command() -> None:
        task = asyncio.create_task(run_command(command, 60))
        while not _started(pidfile):
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        if how == "timeout":
            result = asyncio.run(asyncio.wait_for(run_command(command, 1), 20))
            assert result["timed_out"], result
        else:
            asyncio.run(asyncio.wait_for(stopped_mid_command(), 20))
        wait_for(lambda: _started(pidfile), 10, "the descendant to start")
        descendant = int(pidfile.read_text())
        wait_for(lambda: not alive(descendant), 10, "the descendant to be stopped with the command")
    finally:
        if _started(pidfile) and alive(pid := int(pidfile.read_text())):
            os.kill(pid, signal.SIGKILL)
