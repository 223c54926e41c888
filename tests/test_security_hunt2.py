"""Baton attacked a second time, as a careless or malicious team member or an outsider who reaches its port
(after ``tests/test_security_hunt.py`` and ``tests/test_secrets.py``): what an approver is shown, secrets
that reach chat by another road, and what an unauthenticated client can make Baton hold."""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import BatonProcess, runs_in, serving_guarded, wait_for
from tests.test_discord import fake_discord  # noqa: F401 (a fixture)
from tests.test_slack import ALICE, OPS, Slack, config_path, fake_slack, slack  # noqa: F401 (fixtures)

RLO, ZWSP = "\u202e", "\u200b"  # right-to-left override; zero-width space


def _deploy_config(tmp_path: Path, counter: Path) -> Path:
    """A high-risk runbook whose argument takes any word (``^\\S+$``, a common pattern for a version or a host)."""
    script = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n'); print('deployed', ascii(sys.argv[2]))"
    config = tmp_path / "baton.yaml"
    config.write_text(yaml.safe_dump({"approvers": ["alice", "bob"], "runbooks": {"deploy": {
        "description": "Deploy a version.", "command": [sys.executable, "-c", script, str(counter), "{version}"],
        "args": {"version": {"pattern": r"^\S+$"}}, "risk": "high", "timeout": 10}}}))
    return config


def test_the_approval_card_shows_the_invisible_characters_of_an_argument(tmp_path: Path, sqlite_url: str,
                                                                         counter: Path) -> None:
    """A value with a zero-width space or a bidi override (``^\\S+$`` takes both) was shown raw on the plan and
    on the card: the approver read ``1.2.3`` (or text the override turned around, the rest of the line with
    it) and approved a command that is not the one they read. The card shows such characters as escapes
    (``$'1.2.3\\u200b'``, as bash writes them), so what is approved is what runs."""
    baton = BatonProcess(sqlite_url, _deploy_config(tmp_path, counter), tmp_path).start()
    try:
        pg = baton.client()
        thread = pg.ask(f"@baton run deploy version=1.2.3{ZWSP}", user="carol")
        card = pg.wait_card(thread)
        shown = [message["text"] for message in pg.bot_replies(thread)]
        assert not any(ZWSP in text for text in shown), shown
        assert "$'1.2.3\\u200b'" in card["text"], card["text"]
        reversed_ = pg.ask(f"@baton run deploy version=v1{RLO}3.2.1", user="carol")
        card = pg.wait_card(reversed_)
        assert not any(RLO in message["text"] for message in pg.bot_replies(reversed_))
        assert "$'v1\\u202e3.2.1'" in card["text"], card["text"]
        assert pg.click(card, "bob").status_code == 202
        pg.wait_reply(reversed_, "deployed")
    finally:
        baton.stop()
    assert runs_in(counter) == [f"v1{RLO}3.2.1"]


def test_a_password_in_a_url_a_runbook_prints_is_not_posted(tmp_path: Path, sqlite_url: str) -> None:
    """Only variables named like secrets (``*_KEY``, ``*_TOKEN``, ``*_PASSWORD``...) were kept from chat: the
    password inside an application's ``DATABASE_URL``, a ``REDIS_URL`` or a proxy's ``HTTPS_PROXY`` (the
    runbook's environment has them all) was posted by ``printenv``, and so was Baton's own database password
    where a message shows it as written in its URL (``%40`` for ``@``)."""
    config = tmp_path / "baton.yaml"
    config.write_text(yaml.safe_dump({"approvers": ["bob"], "runbooks": {"env": {
        "description": "Print where the app's services are (a careless runbook).",
        "command": ["printenv", "DATABASE_URL", "HTTPS_PROXY"], "risk": "low", "timeout": 10}}}))
    env = {"DATABASE_URL": "postgres://app:app-db-pass-1@db.internal:5432/app",
           "HTTPS_PROXY": "http://me:proxy%3Apass-2@proxy.internal:3128"}
    baton = BatonProcess(sqlite_url, config, tmp_path, env=env).start()
    try:
        pg = baton.client()
        reply = pg.wait_reply(pg.ask("@baton run env"), "finished")
    finally:
        baton.stop()
    shown = str(reply)
    assert "postgres://app:[redacted]@db.internal:5432/app" in shown, shown
    assert "http://me:[redacted]@proxy.internal:3128" in shown, shown
    assert "app-db-pass-1" not in shown and "pass-2" not in shown


def test_the_database_password_is_redacted_as_its_url_writes_it() -> None:
    from bot.redaction import REDACTED, Redactor
    from bot.settings import Settings

    settings = Settings(BATON_DATABASE_URL="postgresql://baton:pa%40ss-w0rd-1@db/baton",  # type: ignore[call-arg]
                        _env_file=None)
    redactor = Redactor.for_settings(settings, environ={})
    assert redactor.text("could not use postgresql://baton:pa%40ss-w0rd-1@db/baton") == \
        f"could not use postgresql://baton:{REDACTED}@db/baton"
    assert redactor.text("pa@ss-w0rd-1") == REDACTED


def test_a_slash_command_cannot_make_batons_echo_say_something_else(slack: Slack, counter: Path) -> None:
    """``/baton`` is echoed as "@you asked: `/baton ...`", in Baton's name, in the channel. The request was put
    in the code span as typed: a backtick of its own ended the span, and a line break began a line of Baton's
    own, so ``/baton run uptime` done\n:white_check_mark: *Approved by bob*`` had Baton post what reads as an
    approval. The echo is one line, a backtick in it shown as U+02CB and a bidi control as U+FFFD (as Discord's)."""
    typed = f"run uptime` done\n:white_check_mark: *Approved by bob at 10:02* {RLO}x"
    assert slack.sender.command(typed, user=ALICE, channel=OPS).status_code == 200
    anchor = wait_for(lambda: slack.fake.find("asked:", channel=OPS), 20, "the echo")
    assert "\n" not in anchor.text and anchor.text.count("`") == 2 and RLO not in anchor.text, anchor.text
    assert anchor.text == (f"<@{ALICE}> asked: `/baton run uptime\u02cb done :white_check_mark: "
                           f"*Approved by bob at 10:02* \ufffdx`")


@pytest.fixture
def guarded_server() -> Iterator[int]:
    """uvicorn serving a small app through ``bot.server.GuardedHttpProtocol``; its port."""
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        size, more = 0, True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        answer = str(size).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    with serving_guarded(app) as port:
        yield port


def _answer(connection: socket.socket) -> bytes:
    """What the server sends until it closes the connection."""
    connection.settimeout(10)
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def test_a_request_whose_headers_never_end_is_refused(guarded_server: int) -> None:
    """uvicorn kept every header line it was sent: one unauthenticated request of 200 MB of headers (to
    /slack/events, which faces the internet) grew Baton by 200 MB, and it grew for as long as they came."""
    head = b"POST /slack/events HTTP/1.1\r\nHost: baton\r\n" + b"X-Filler: " + b"a" * 70_000 + b"\r\n"
    with socket.create_connection(("127.0.0.1", guarded_server)) as connection:
        connection.sendall(head)
        answer = _answer(connection)
    assert answer.startswith(b"HTTP/1.1 431 ") and b"65,536 bytes" in answer, answer[:200]
    with socket.create_connection(("127.0.0.1", guarded_server)) as connection:  # what comes on is not read
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            connection.sendall(b"GET / HTTP/1.1\r\nHost: baton\r\n")
            for _ in range(10_000):  # 80 MB
                connection.sendall(b"X-Filler: " + b"a" * 8000 + b"\r\n")
    with socket.create_connection(("127.0.0.1", guarded_server)) as connection:  # and the server answers on
        body = b"x" * 1_000_000  # a large body in few reads is no large head
        connection.sendall(b"POST / HTTP/1.1\r\nHost: baton\r\nConnection: close\r\nContent-Length: 1000000\r\n\r\n"
                           + body)
        assert _answer(connection).endswith(b"\r\n\r\n1000000")


def test_a_connection_that_sends_slowly_or_nothing_is_closed(guarded_server: int, monkeypatch) -> None:
    """A connection that never sent a byte, or sent its request a byte at a time (slowloris), was held for ever,
    each a file descriptor of Baton's: a few thousand took them all (the database's and runbooks' pipes too)."""
    monkeypatch.setattr("bot.server.REQUEST_READ_SECONDS", 0.5)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", guarded_server)) as silent, \
            socket.create_connection(("127.0.0.1", guarded_server)) as slow_head, \
            socket.create_connection(("127.0.0.1", guarded_server)) as slow_body:
        slow_head.sendall(b"GET /healthz HTTP/1.1\r\nHost: baton\r\n")
        slow_body.sendall(b"POST / HTTP/1.1\r\nHost: baton\r\nContent-Length: 100\r\n\r\npart of it")
        assert _answer(silent).startswith(b"HTTP/1.1 408 ")
        assert _answer(slow_head).startswith(b"HTTP/1.1 408 ")
        assert _answer(slow_body) == b""  # cut off: its route saw the client gone
    assert time.monotonic() - started < 5
    with socket.create_connection(("127.0.0.1", guarded_server)) as kept:  # requests that come whole are answered
        for _ in range(2):
            kept.sendall(b"POST / HTTP/1.1\r\nHost: baton\r\nContent-Length: 3\r\n\r\nabc")
            kept.settimeout(5)
            answer = b""
            while not answer.endswith(b"\r\n\r\n3"):
                answer += kept.recv(65536) or pytest.fail(f"closed after {answer!r}")
            time.sleep(0.3)  # kept alive past the deadline of the first request: it was met


def test_with_slack_configured_the_playground_api_is_not_there(slack: Slack) -> None:
    """The playground trusts the user name it is given: served beside Slack, anyone reaching the port could post
    as anyone and approve Slack's runs' cards by their approval ids. With a Slack token it is not served (a guard:
    no bug found)."""
    with httpx.Client(base_url=slack.baton.url, timeout=15) as http:
        click = {"message_id": 1, "approval_id": "x", "action": "approve", "user": "U0BOB00002"}
        assert http.post("/api/clicks", json=click).status_code == 404
        assert http.post("/api/messages", json={"channel": "general", "user": "U0BOB00002", "text": "hi"}).status_code == 404
        assert http.get("/api/channels").status_code == 404 and http.get("/").status_code == 404
        assert http.post("/slack/events", json={"type": "url_verification", "challenge": "x"}).status_code == 401


RESPONSE_URL = "https://hooks.slack.com/commands/T0BATON/1234567890/c4pab1l1tyS3cr3tUrl"


def test_at_debug_level_slacks_envelopes_are_not_logged(fake_slack, start_baton, sqlite_url: str) -> None:
    """BATON_LOG_LEVEL=DEBUG with Socket Mode logged every envelope slack_sdk received, whole: each person's
    message and DM, and a command's or click's response_url, with which anyone reading the log could post in the
    channel and replace Baton's card (buttons and all) for half an hour. As discord.py's loggers, slack_sdk's
    Socket Mode client's stays at INFO."""
    from tests.fake_slack import SlackSender

    baton = start_baton(sqlite_url, env={**fake_slack.env(socket_mode=True), "BATON_LOG_LEVEL": "DEBUG"})
    wait_for(lambda: fake_slack.socket_connections == 1, what="Baton's Socket Mode connection")
    sender = SlackSender(baton.url)
    command = {"token": "legacy-verification-token", "team_id": "T0BATON", "channel_id": OPS, "channel_name": "ops",
               "user_id": ALICE, "command": "/baton", "text": "run uptime", "response_url": RESPONSE_URL,
               "trigger_id": "42.abc"}
    fake_slack.send_envelope(command, kind="slash_commands")
    mention = sender.mention("run uptime private words", user=ALICE)
    fake_slack.send_envelope(json.loads(sender.event_body(mention)))
    wait_for(lambda: len(fake_slack.socket_acks) == 2, what="both envelopes acknowledged")
    log = baton.log.read_text()
    assert "DEBUG" in log  # the level is on
    assert RESPONSE_URL not in log and "private words" not in log


def test_at_debug_level_slacks_requests_are_not_logged(fake_slack, start_baton, sqlite_url: str) -> None:
    """The same over HTTP (Bolt's and slack_sdk's loggers at DEBUG): a guard, no bug found."""
    from tests.fake_slack import SlackSender

    baton = start_baton(sqlite_url, env={**fake_slack.env(), "BATON_LOG_LEVEL": "DEBUG"})
    sender = SlackSender(baton.url)
    body = "&".join(f"{key}={value}" for key, value in {
        "token": "legacy", "team_id": "T0BATON", "channel_id": OPS, "channel_name": "ops", "user_id": ALICE,
        "command": "/baton", "text": "run uptime", "response_url": RESPONSE_URL, "trigger_id": "43.abc"}.items())
    assert sender.post(body, "application/x-www-form-urlencoded").status_code == 200
    assert sender.send_event(sender.mention("run uptime private words", user=ALICE)).status_code == 200
    wait_for(lambda: fake_slack.find("did uptime"), what="a reply")
    log = baton.log.read_text()
    assert "DEBUG" in log and RESPONSE_URL not in log and "private words" not in log


def test_a_thread_links_label_stays_on_its_line() -> None:
    """A link's label is a request's title (``status``, digests): one with a line break (a request typed on two
    lines) broke the link on Discord, and its second line was markdown of its own in Baton's message (a
    ``# heading`` reading "Approved by bob", the link's address after it); Slack showed the raw ``<url|...``."""
    from adapters import discord_render, slack_blocks
    from bot.messages import Message, ThreadLink

    message = Message(parts=[ThreadLink(label="deploy web\n# Approved by bob\r\n-# ok", channel="C1", thread="1.2")])
    (discord,) = discord_render.render(message, "42")
    assert discord.content == "[deploy web # Approved by bob -# ok](https://discord.com/channels/42/1.2)"
    (slack,) = slack_blocks.render(message, lambda channel, thread: "https://x.slack.com/archives/C1/p12").messages
    assert slack["blocks"][0]["text"]["text"] == "<https://x.slack.com/archives/C1/p12|deploy web # Approved by bob -# ok>"


def test_discord_posts_ping_nobody_whatever_the_text_says(fake_discord, tmp_path: Path, sqlite_url: str) -> None:
    """A runbook printing ``@everyone`` or a role's mention, and a request quoting them back (help's "I don't
    know how to handle ..."): every message, edit and reply Baton sends Discord allows no mention (a guard: no
    bug found; the one exception, a refusal posted in the thread for someone who takes no DMs, pings only them)."""
    from tests.fake_discord import GUILD_ID as DISCORD_GUILD
    from tests.test_discord import QUICK_TRIES

    config = tmp_path / "baton.yaml"
    config.write_text(yaml.safe_dump({"approvers": ["alice"], "runbooks": {"shout": {
        "description": "Print pings.", "command": ["echo", f"@everyone @here <@&{DISCORD_GUILD}> look"],
        "risk": "low", "timeout": 10}}}))
    baton = BatonProcess(sqlite_url, config, tmp_path, env={**fake_discord.env(), **QUICK_TRIES}).start()
    try:
        wait_for(lambda: fake_discord.sessions == 1, what="Baton's gateway session")
        fake_discord.say("run shout")
        fake_discord.say("@everyone look at this")
        wait_for(lambda: fake_discord.find("finished"), 20, "the runbook's reply")
        wait_for(lambda: fake_discord.find("know how to handle"), 20, "help's reply")
    finally:
        baton.stop()
    sent = [call for call in fake_discord.calls() if isinstance(call.body, dict) and
            ("content" in call.body or "embeds" in call.body)]  # what shows text: posts, edits, replies
    assert sent and all(call.body.get("allowed_mentions", {}).get("parse") == [] for call in sent), \
        [(call.route, call.body.get("allowed_mentions")) for call in sent]


def test_baton_run_refuses_a_header_flood(start_baton, sqlite_url: str) -> None:
    """``baton run`` serves with the guarded protocol: a request of endless headers is cut off (it took as much
    of Baton's memory as was sent), and the next request is answered."""
    baton = start_baton(sqlite_url)
    with socket.create_connection(("127.0.0.1", baton.port)) as connection:
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            connection.sendall(b"POST /slack/events HTTP/1.1\r\nHost: baton\r\n")
            for _ in range(10_000):
                connection.sendall(b"X-Filler: " + b"a" * 8000 + b"\r\n")
    assert httpx.get(f"{baton.url}/healthz", timeout=10).status_code == 200


def test_a_request_quoted_back_cannot_pass_a_line_for_batons_own(slack: Slack) -> None:
    """help, status and the "Which one?" card quoted a request as written: a second line of it,
    `:white_check_mark: *Approved by <@bob>*`, was posted in Baton's voice, bold, pinging bob. It is quoted as
    code on one line."""
    forged = "whatever\n:white_check_mark: *Approved by <@U0BOB00002> at 10:02*"
    event = slack.mention(forged, channel=OPS)
    reply = wait_for(lambda: slack.fake.find("I don't know how to handle", channel=OPS, thread=event["ts"]),
                     what="help's reply")
    shown = json.dumps(reply.blocks)
    assert "`whatever :white_check_mark: *Approved by @U0BOB00002 at 10:02*`" in shown, shown  # in code: no ping
    assert "\\n:white_check_mark:" not in shown, shown


@pytest.mark.parametrize("filler", [66_000, 70_000, 120_000])
def test_a_whole_head_over_64_kib_is_refused_however_it_is_read(guarded_server: int, filler: int) -> None:
    """A head over the limit sent in one write was served: the read that ended it was not counted, so 64 KiB and
    one read more (up to 256 KiB) went through, where the README says 431."""
    head = (b"POST / HTTP/1.1\r\nHost: baton\r\nConnection: close\r\nContent-Length: 3\r\n"
            + b"X-Filler: " + b"a" * filler + b"\r\n\r\nabc")
    with socket.create_connection(("127.0.0.1", guarded_server)) as connection:
        connection.sendall(head)
        answer = _answer(connection)
    assert answer.startswith(b"HTTP/1.1 431 ") and b"65,536 bytes" in answer, answer[:200]


def test_a_head_just_under_64_kib_is_served(guarded_server: int) -> None:
    head = (b"POST / HTTP/1.1\r\nHost: baton\r\nConnection: close\r\nContent-Length: 3\r\n"
            + b"X-Filler: " + b"a" * 65_000 + b"\r\n\r\nabc")
    with socket.create_connection(("127.0.0.1", guarded_server)) as connection:
        connection.sendall(head)
        assert _answer(connection).endswith(b"\r\n\r\n3")
