"""A Discord channel Baton lost access to (403 Missing Access, 50001): as ``test_unreachable_channel`` for Slack."""

from __future__ import annotations

import re
from pathlib import Path

from tests.fake_discord import OPS
from tests.support import runs_in, wait_for
from tests.test_discord import Discord, chat, config_path, fake_discord  # noqa: F401 (fixtures)
from tests.test_unreachable_channel import _log_lines, _undeliverable


def test_discord_a_channel_baton_lost_access_to_is_told_once_counted_and_its_card_run_ends(
        chat: Discord, counter: Path) -> None:
    """Before: each refusal was an ERROR line ("403 Missing Access") and the run waited a day for its card's click."""
    chat.fake.shut_out.add(OPS)  # its threads too: Baton's role lost View Channel there
    chat.fake.say("run uptime", channel=OPS)
    chat.fake.say("run restart service=web", channel=OPS)
    wait_for(lambda: chat.rows("SELECT status FROM runs WHERE input_text LIKE '%restart%'") == [("failed",)], 30,
             "the run whose card was refused to end")
    (error,) = chat.rows("SELECT error FROM runs WHERE input_text LIKE '%restart%'")[0]
    assert error.startswith("its approval card could not be posted (Discord: 403 Missing Access"), error
    assert runs_in(counter) == ["uptime"]
    assert chat.rows("SELECT status FROM approvals") == [("stale",)]
    # Both runs' replies too (the uptime run's may still be on its way when the other's card was refused)
    wait_for(lambda: sorted(chat.rows("SELECT status FROM runs")) == [("done",), ("failed",)], 20, "both runs to end")
    wait_for(lambda: chat.rows("SELECT DISTINCT status FROM outbox") == [("failed",)] and
             len(chat.rows("SELECT DISTINCT thread FROM outbox")) == 2, 20, "every message of both threads given up")
    refused = len(chat.rows("SELECT id FROM outbox"))
    # A Discord thread is a channel of its own, which may be the only one Baton cannot reach: told once a thread
    def told_each() -> list[str] | None:
        lines = _log_lines(chat.baton.log, "WARNING", f"of channel {OPS} cannot be reached")
        return lines if len(lines) >= 2 else None

    told = wait_for(told_each, 20, "each thread told")
    threads = {thread for (thread,) in chat.rows("SELECT DISTINCT thread FROM outbox")}
    assert len(told) == len(threads) == 2 and all("403 Missing Access" in line for line in told), told
    named = {found.group(1) for line in told if (found := re.search(r"thread (\d+) of channel", line))}
    assert named == threads
    assert _log_lines(chat.baton.log, "ERROR", "rejected message") == []
    wait_for(lambda: _undeliverable(chat.baton.url, "discord", "removed") == refused, 20, "every refusal counted")
