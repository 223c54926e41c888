"""The Slack adapter against what real Slack sends and refuses: its markup in people's text, its
limits on what Baton posts (``tests/fake_slack.py`` checks them the way Slack does)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from adapters import slack_blocks
from bot.messages import Message, Note, Text
from tests.fake_slack import check_message
from tests.support import runs_in, write_config
from tests.test_slack import ALICE, BOB, GENERAL, OPS, Slack, config_path, fake_slack, slack  # noqa: F401 (fixtures)
from tests.fake_slack import shown_text

RECORD = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n'); print('did', sys.argv[2])"


@pytest.fixture
def config_path(tmp_path: Path, counter: Path) -> Path:  # noqa: F811 (the usual runbooks, and two with an address)
    config = write_config(tmp_path, counter, approvers=[f"slack:{BOB}", ALICE])
    config.write_text(config.read_text() + f"""
  ping:
    description: Ping a host.
    command: [{sys.executable!r}, "-c", {RECORD!r}, {str(counter)!r}, "ping {{host}}"]
    args:
      host:
        pattern: "^[a-z0-9.-]+$"
    risk: low
    timeout: 10
  probe:
    description: Probe a URL.
    command: [{sys.executable!r}, "-c", {RECORD!r}, {str(counter)!r}, "probe {{url}}"]
    args:
      url:
        pattern: "^https://[^ ]+$"
    risk: low
    timeout: 10
""")
    return config


def test_addresses_slack_turned_into_links_reach_the_runbook_as_typed(slack: Slack, counter: Path) -> None:
    """Slack sends a host name or a URL a person typed as a link (``<http://db1.example.com|db1.example.com>``):
    the runbook refused it ("does not match the allowed pattern"), and nothing a person can type avoided it."""
    host = slack.mention("run ping host=<http://db1.example.com|db1.example.com>")
    slack.reply("did ping db1.example.com", host["ts"])
    url = slack.mention("run probe url=<https://status.example.com/x?a=1&amp;b=2>", channel=OPS)
    slack.reply("did probe https://status.example.com/x?a=1&amp;b=2", url["ts"], channel=OPS)
    assert runs_in(counter) == ["ping db1.example.com", "probe https://status.example.com/x?a=1&b=2"]


def test_mentions_channels_and_links_in_a_thread_read_as_people_see_them(slack: Slack, counter: Path) -> None:
    """Other people's mentions, channels and links were quoted as raw markup (``<@U0BOB00002>``, shown
    escaped, as text); they are shown as Slack shows them: a mention, ``#ops``, the address."""
    event = slack.mention("run uptime")
    slack.fake.said(event)
    slack.reply("did uptime", event["ts"])
    note = slack.sender.message(f"failed again, <@{BOB}> see <#{OPS}|ops> and <https://status.example.com> "
                                "<!here>", user=ALICE, thread_ts=event["ts"])
    slack.fake.said(note)
    ask = slack.sender.mention("summarize", user=BOB, thread_ts=event["ts"])
    slack.fake.said(ask)
    assert slack.sender.send_event(ask).status_code == 200
    summary = shown_text(slack.reply("Extractive summary of this thread", event["ts"]))
    assert f"• <@{ALICE}>: failed again, <@{BOB}> see #ops and https://status.example.com @here" in summary


def test_typed_text_undoes_slack_markup() -> None:
    cases = {
        "<@U0BOB00002> and <@U0CAROL003|carol>": "@U0BOB00002 and @U0CAROL003",
        "<#C0OPS00001|ops> <#C0OPS00001>": "#ops #C0OPS00001",
        "<!here> <!channel> <!everyone|everyone> <!subteam^S0TEAM|@oncall>": "@here @channel @everyone @oncall",
        "<!date^1392734382^{date_num}|2014-02-18>": "2014-02-18",
        "<http://a.example.com|a.example.com> <mailto:ops@x.io|ops@x.io> <https://x.io/?a=1&amp;b=2>":
            "a.example.com ops@x.io https://x.io/?a=1&b=2",
        "<https://x.io/runbook|the runbook>": "the runbook (https://x.io/runbook)",
        "a &lt;b&gt; &amp;lt; c": "a <b> &lt; c",
    }
    for sent, typed in cases.items():
        assert slack_blocks.typed_text(sent) == typed


def test_mentions_read_back_in_replies_are_mentions_again() -> None:
    (rendered,) = slack_blocks.render(Message(parts=[Text(text="ask @U0BOB00002, not me@U0BOB00002")]),
                                      lambda channel, ts: "").messages
    assert rendered["blocks"][0]["text"]["text"] == "ask <@U0BOB00002>, not me@U0BOB00002"


@pytest.mark.parametrize("part", [Text, Note])
def test_text_full_of_user_ids_stays_within_slack_section_limits(part: type[Text] | type[Note]) -> None:
    """Each id becomes ``<@...>`` after the text was split: a 2,900-character piece grew past Slack's
    3,000, and Slack refused the whole message (``invalid_blocks``): it was never shown."""
    lines = "".join(f"U0USER{n:04d} ran restart web\n" for n in range(150))
    one_line = "U0USER0001 " * 400
    for text in (lines, one_line):
        rendered = slack_blocks.render(Message(parts=[part(text=text)]), lambda channel, ts: "")
        assert [check_message({"channel": GENERAL, **message}) for message in rendered.messages] == [""] * len(
            rendered.messages)
