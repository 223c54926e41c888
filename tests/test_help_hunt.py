"""Help and status as a demanding user reads them: people talking in a Baton thread, what help points at,
what a copied usage line gets, how old a request is."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from bot.app import Baton
from bot.config import load_config
from bot.kit import Request
from bot.messages import InboundMessage
from bot.registry import GraphRegistry
from bot.routing import RouteError, is_request, route, route_to
from bot.settings import Settings
from storage.models import InboundEvent, PlaygroundMessage, Run, ThreadRecord, utcnow
from tests.fake_models import script
from tests.support import until

REGISTRY = GraphRegistry.discover()
REQUEST = Request(platform="playground", channel="general", thread="1", user="alice", text="")


@pytest.mark.parametrize("text", ["status of web-2 is fine now", "help me check the logs, carol?",
                                  "Status all green, bob", "summarize it for bob later"])
def test_a_graphs_name_leading_peoples_talk_in_a_thread_is_no_request(text: str, config_path: Path) -> None:
    """In a Baton thread, without mentioning Baton, "status of web-2 is fine now" (people talking) was a request
    for `status`: the channel's status was posted into their conversation (and "Queued: ..." while a run went
    on). Unaddressed, a graph's name is a request only as the whole message, as `cancel` is."""
    config = load_config(config_path)
    assert route(REQUEST, text, REGISTRY, config, addressed=False).unmatched
    assert not is_request(text, REGISTRY, addressed=False)
    assert not route(REQUEST, text, REGISTRY, config).unmatched  # mentioned: a request, as before
    assert is_request(text, REGISTRY)


@pytest.mark.parametrize("text", ["status", "STATUS", "help", "force status", "summarize", "run uptime",
                                  "run restart service=web", "digest list", "cancel"])
def test_a_whole_message_naming_a_graph_or_a_command_is_still_a_request_unaddressed(text: str,
                                                                                     config_path: Path) -> None:
    config = load_config(config_path)
    assert not route(REQUEST, text, REGISTRY, config, addressed=False).unmatched
    assert is_request(text, REGISTRY, addressed=False)


def test_help_chosen_for_a_request_shows_the_help_without_calling_it_unknown() -> None:
    """A request a model confidently routed to help (or a choice card's pick of help) was answered "I don't know
    how to handle “what can you do?” yet": help got the whole request as words it did not know."""
    request = Request(platform="playground", channel="general", thread="1", user="alice", text="what can you do?")
    chosen = route_to(REGISTRY, "help", request, "what can you do?")
    assert chosen.graph == "help" and chosen.input["text"] == ""


async def test_a_model_sending_a_request_to_help_gets_the_help(tmp_path: Path, config_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    script_path = tmp_path / "script.json"
    monkeypatch.setenv("BATON_TEST_MODEL_SCRIPT", str(script_path))
    script(script_path, [{"tool_calls": [{"name": "GraphGuess", "id": "g1", "args": {
        "graph": "help", "confidence": 0.95, "alternatives": []}}]}])
    reply = await _answer(tmp_path, config_path, "what can you do?", BATON_MODEL="python:tests.fake_models:scripted")
    assert "Here is what I can do" in reply and "I don't know how to handle" not in reply, reply
    assert "BATON_MODEL" not in reply  # a model is configured: nothing to say about plain words


async def test_plain_words_naming_a_runbook_without_a_model_point_at_its_command(tmp_path: Path,
                                                                                 config_path: Path) -> None:
    """Without a model, "@baton restart the web service please" got the whole catalogue: no word that plain
    words need a model, nor a pointer to `run restart service=<...>` though "restart" names a runbook."""
    reply = await _answer(tmp_path, config_path, "restart the web service please")
    first = reply.splitlines()[1]
    assert first == ("I don't know how to handle `restart the web service please` yet. "
                     "Did you mean `run restart service=<one of web, api, worker>`?"), reply
    assert "Requests in plain language need a language model, and none is configured (`BATON_MODEL`); " \
           "the commands below work without one." in reply


async def test_help_shows_a_long_or_many_lined_description_on_its_own_line(tmp_path: Path, config_path: Path) -> None:
    """A runbook described in a YAML block (several lines) broke the list: its second line stood outside its
    bullet, as if it were help's own words; a description of a page filled the help with it."""
    config_path.write_text(config_path.read_text() + """
  notes:
    description: |
      Prints the release notes.
      Use `notes` after each deploy.
    command: ["echo", "notes"]
  essay:
    description: "Says a lot. """ + "word " * 100 + """"
    command: ["echo", "essay"]
  bare:
    description: ""
    command: ["echo", "bare"]
""")
    reply = await _answer(tmp_path, config_path, "help")
    lines = reply.splitlines()
    assert "• `run notes` — Prints the release notes. Use `notes` after each deploy." in lines, reply
    essay = next(line for line in lines if line.startswith("• `run essay`"))
    assert len(essay) < 250 and essay.endswith("word…"), essay
    assert "• `run bare`" in lines
    assert all(line.startswith("• ") for line in lines[lines.index("Here is what I can do (in a channel, mention me "
                                                                   "first):") + 1:-2]), reply


async def test_help_lists_many_runbooks_by_name_past_the_first_thirty(tmp_path: Path, config_path: Path) -> None:
    """With 300 runbooks, help listed each with its example and description: on Discord (2,000 characters a
    message) a dozen messages for one `help`. As `run` does, the first 30 are listed, the rest by name."""
    config_path.write_text(config_path.read_text() + "".join(
        f"""
  job{n:03}:
    description: Runs nightly job number {n}, which takes a while and says so at length.
    command: ["echo", "{n}"]
    args:
      day:
        pattern: "^[a-z]+$"
        description: the day to run it for
""" for n in range(300)))
    reply = await _answer(tmp_path, config_path, "help")
    shown = 30 - 7  # baton.yaml's own 7 runbooks first
    assert f"• `run job{shown - 1:03} day=<the day to run it for>` — Runs nightly job number {shown - 1}" in reply
    assert f"job{shown:03} day=" not in reply and "`run job299" not in reply
    assert f"…and {300 - shown} more runbooks: `job{shown:03}`, `job{shown + 1:03}`," in reply
    assert reply.count("`job299`") == 1
    assert len(reply) < 8000, len(reply)


@pytest.mark.parametrize(("text", "placeholder"), [
    ("run restart service=<one of web, api, worker>", "`<one of web, api, worker>`"),
    ("run restart force service=<one of web, api, worker>", "`<one of web, api, worker>`"),
    ("run slow seconds=<seconds>", "`<seconds>`"),
])
def test_a_usage_line_pasted_back_says_to_fill_in_its_placeholder(text: str, placeholder: str,
                                                                  config_path: Path) -> None:
    """Help shows `run restart service=<one of web, api, worker>`; pasted back as shown, it was refused word by
    word: "`service=<one` does not match ...; `of` is not a `key=value` argument; `web,` is not ..." (five)."""
    with pytest.raises(RouteError) as refused:
        route(REQUEST, text, REGISTRY, load_config(config_path))
    message = str(refused.value)
    assert f"{placeholder} stands for a value: write the value itself in its place" in message, message
    assert "is not a `key=value` argument" not in message and message.endswith("Nothing was run.")


def test_a_usage_line_with_an_optional_argument_pasted_back_says_what_the_brackets_mean(tmp_path: Path) -> None:
    path = tmp_path / "baton.yaml"
    path.write_text(json.dumps({"runbooks": {"echo": {"description": "Echo.", "command": ["echo", "{msg}", "{loud}"], "args": {
        "msg": {"pattern": "^.*$", "description": "the message"},
        "loud": {"pattern": "^(yes|no)$", "description": "shout it", "default": "no"}}}}}))
    with pytest.raises(RouteError) as refused:
        route(REQUEST, "run echo msg=<the message> [loud=<shout it>]", REGISTRY, load_config(path))
    assert str(refused.value) == (
        "Runbook `echo`: `<the message>` stands for a value: write the value itself in its place, without the angle "
        "brackets. Leave out an argument in [brackets], or give it without them. Usage: "
        "`run echo msg=<the message> [loud=<shout it>]`. Nothing was run.")
    # a value that only looks like one is the value
    assert route(REQUEST, "run echo msg=<b>hi</b>", REGISTRY, load_config(path)).input["args"]["msg"] == "<b>hi</b>"


async def test_status_tells_how_long_ago_a_request_was_asked_not_when_its_thread_last_changed(
        tmp_path: Path, config_path: Path, database_url: str) -> None:
    """Asked three hours ago, approved five seconds ago: status read "(asked by bob, 5.0s)", the age of the
    thread's last change. A request queued behind another run was asked when it came, not when it started."""
    now = utcnow()
    async with _baton(tmp_path, config_path, BATON_DATABASE_URL=database_url) as baton:
        async with baton.db.session() as session:
            for thread, asked, started in (("old", None, timedelta(hours=3)),
                                           ("queued", timedelta(minutes=40), timedelta(minutes=1))):
                record = ThreadRecord(platform="playground", channel="general", thread=thread, status="running",
                                      graph="runbook", title=f"run {thread}", requested_by="bob",
                                      updated_at=now - timedelta(seconds=5))
                session.add(record)
                await session.flush()
                event = None
                if asked is not None:
                    event = InboundEvent(platform="playground", event_id=f"ev-{thread}", kind="message",
                                         channel="general", thread=thread, user="bob", text=f"run {thread}",
                                         status="done", thread_record_id=record.id, received_at=now - asked)
                    session.add(event)
                    await session.flush()
                session.add(Run(thread_record_id=record.id, inbound_id=event.id if event else None,  # type: ignore[arg-type]
                                platform="playground", channel="general", graph="runbook", requested_by="bob",
                                correlation_id=f"c-{thread}", started_at=now - started))
        reply = await _ask(baton, "status")
    lines = [line for line in reply.splitlines() if "asked by bob" in line]
    assert len(lines) == 2 and "run old" in lines[0] and "(asked by bob, 3h)" in lines[0], reply
    assert "run queued" in lines[1] and "(asked by bob, 40m)" in lines[1], reply


async def test_status_says_a_which_one_card_waits_for_a_choice_not_an_approval(
        tmp_path: Path, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A "Which one?" card (a model unsure of the graph) was listed as "waiting for approval", sending approvers
    to look for a card they could not decide: it waits for the requester's pick."""
    script_path = tmp_path / "script.json"
    monkeypatch.setenv("BATON_TEST_MODEL_SCRIPT", str(script_path))
    script(script_path, [{"tool_calls": [{"name": "GraphGuess", "id": "g1", "args": {
        "graph": "status", "confidence": 0.4, "alternatives": ["help"]}}]}])
    async with _baton(tmp_path, config_path, BATON_MODEL="python:tests.fake_models:scripted") as baton:
        assert "Which one?" in await _ask(baton, "hmm, the thing?", thread="asked")
        reply = await _ask(baton, "status")
    assert "hmm, the thing? — waiting for a choice (asked by alice," in reply, reply


def _baton(tmp_path: Path, config_path: Path, **settings: str) -> Baton:
    settings = {"BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'h.db'}", **settings}
    return Baton(Settings(BATON_CONFIG=config_path, BATON_ADAPTERS="playground", **settings))  # type: ignore[call-arg,arg-type]


async def _answer(tmp_path: Path, config_path: Path, text: str, **settings: str) -> str:
    async with _baton(tmp_path, config_path, **settings) as baton:
        return await _ask(baton, text)


async def _ask(baton: Baton, text: str, thread: str = "1") -> str:
    await baton.accept_message(InboundMessage(platform="playground", channel="general", thread=thread,
                                              event_id=f"ask-{thread}", user="alice", text=text, addressed=True))

    async def answered() -> str | None:
        async with baton.db.read() as session:
            found = (await session.exec(select(PlaygroundMessage.text).where(
                PlaygroundMessage.thread_id == thread, PlaygroundMessage.is_bot))).all()
        return found[-1] if found else None
    return await until(answered, f"Baton's answer to {text!r}")


async def test_people_talking_in_a_baton_thread_get_no_status_or_help(tmp_path: Path, config_path: Path) -> None:
    """In a Baton thread, without mentioning Baton, "status of web-2 is fine now" and "help me check the logs,
    carol?" (people talking) were answered with the channel's status and the whole help text. The whole message
    `status` still is a request there."""
    async with _baton(tmp_path, config_path) as baton:
        await _ask(baton, "run uptime", thread="t")
        for n, text in enumerate(["status of web-2 is fine now", "help me check the logs, carol?", "status"]):
            await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="t",
                                                      event_id=f"talk-{n}", user="bob", text=text, addressed=False))
        texts = await until(lambda: _bot_texts(baton, "t", "*Status*"), "the status asked by its name alone")
    assert len(texts) == 2 and "Baton help" not in texts[0] and "did uptime" in texts[0], texts


async def _bot_texts(baton: Baton, thread: str, needle: str) -> list[str] | None:
    async with baton.db.read() as session:
        texts = list((await session.exec(select(PlaygroundMessage.text).where(
            PlaygroundMessage.thread_id == thread, PlaygroundMessage.is_bot).order_by(PlaygroundMessage.id))).all())
    return texts if any(needle in text for text in texts) else None


async def test_help_in_a_direct_message_says_no_mention_is_needed_and_where_approvals_happen(
        tmp_path: Path, config_path: Path) -> None:
    """In a DM, help said "in a channel, mention me first" and listed high-risk runbooks as "(needs approval)",
    though a request needing approval is never run in a DM (nobody else sees its card)."""
    async with _baton(tmp_path, config_path) as baton:
        await baton.accept_message(InboundMessage(platform="playground", channel="dm-alice", thread="d",
                                                  event_id="dm-help", user="alice", text="help", addressed=True,
                                                  private=True))
        [direct] = await until(lambda: _bot_texts(baton, "d", "Baton help"), "help in the DM")
        in_channel = await _ask(baton, "help")
    assert "no mention needed here" in direct and "mention me first" not in direct, direct
    assert "`run restart service=" in direct and "(needs approval: ask in a channel" in direct, direct
    assert "mention me first" in in_channel and "(needs approval)" in in_channel, in_channel
