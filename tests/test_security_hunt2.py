"""Baton attacked a second time, as a careless or malicious team member or an outsider who reaches its port
(after ``tests/test_security_hunt.py`` and ``tests/test_secrets.py``): what an approver is shown, secrets
that reach chat by another road, and what an unauthenticated client can make Baton hold."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from tests.support import BatonProcess, runs_in, wait_for
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
