"""What the thread is shown of a graph: its reply as it is, its error when it gave no reply, its whole question."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypedDict

import pytest
from langgraph.types import interrupt
from sqlmodel import select

from adapters import discord_render, slack_blocks
from bot import replies
from bot.app import Baton
from bot.messages import InboundClick, InboundMessage
from bot.registry import GraphSpec, _input_told
from bot.settings import Settings
from storage.models import Approval, AuditEntry, PlaygroundMessage, Run
from tests.fake_models import script
from tests.test_authoring_hunt import _asked_on
from tests.test_graph_modules import _asked, _one_node, _reply


class State(TypedDict, total=False):
    text: str
    reply: str
    error: str


@pytest.mark.parametrize(("reply", "failed", "error", "shown"), [
    ("Deployed web.", False, None, "Deployed web."),
    (3, False, None, "3"),
    (["web", "api"], False, None, '```\n[\n  "web",\n  "api"\n]\n```'),  # was "Done."
    ({"restarted": "web"}, False, None, '```\n{\n  "restarted": "web"\n}\n```'),  # no message dict: was "Done."
    (None, False, None, "Done."),
    ([], False, None, "Done."),
    (None, True, "the deploy API said 503", "The run failed: the deploy API said 503"),  # was "The run failed."
    ("", True, True, "The run failed."),
    # Not JSON, shown as Python shows it: they were "Done.", the reply lost (graph-authoring hunt 2)
    (datetime(2026, 12, 6, 7, 0, tzinfo=UTC), False, None, "2026-12-06 07:00:00+00:00"),
    (b"restarted web", False, None, "restarted web"),
    ({"web", "api"}, False, None, '```\n[\n  "api",\n  "web"\n]\n```'),
    (Decimal("1.50"), False, None, "1.50"),
])
def test_a_graphs_reply_is_shown_as_it_is(reply: Any, failed: bool, error: Any, shown: str) -> None:
    assert replies.result(reply, failed=failed, error=error).plain_text() == shown


async def test_a_failure_names_its_node_and_shows_what_was_wrong(tmp_path, config_path) -> None:
    """"`deploy` failed: ValidationError: 1 validation error for Deploy": which field, and which node, were in
    `baton threads` alone. LangGraph notes the node on the exception; the error's first lines say what."""
    from pydantic import BaseModel

    class Deploy(BaseModel):
        service: str

    def check(state: State) -> State:
        Deploy.model_validate({"text": state.get("text")})
        return {}

    graph = _one_node(lambda _state: {})
    graph.add_node("check", check)
    graph.add_edge("act", "check")
    async with _asked(tmp_path, config_path, GraphSpec(name="deploy", graph=graph), "deploy web") as baton:
        shown = await _reply(baton, "1")
    assert shown.startswith("*Run failed*\n`deploy` failed in `check`:\n```\nValidationError: 1 validation error "
                            "for Deploy\nservice\n  Field required"), shown
    assert shown.split("```")[1].strip("\n").count("\n") == 2, shown  # three lines, not pydantic's link to its docs


def test_a_failure_quoting_what_someone_wrote_shows_it_as_code() -> None:
    """An error quoting the request (pydantic's ``input_value``) was prose after "failed:": on Discord a masked
    link, a heading, bold in Baton's own card; on Slack a mention (found by the render hunt)."""
    error = ValueError("unknown service [login](http://evil.example) *now*\n# Heading")
    rendered = discord_render.render(replies.failure("deploy", error), "G1")[0].embed.description
    assert "```\nValueError: unknown service [login](http://evil.example) *now*\n# Heading\n```" in rendered, rendered
    slack = slack_blocks.render(replies.failure("deploy", ValueError("ask <@U0123ABCD9> *now*")), lambda c, t: "")
    sections = [block["text"]["text"] for out in slack.messages for block in out["blocks"] if block["type"] == "section"]
    assert "```\nValueError: ask &lt;@U0123ABCD9&gt; *now*\n```" in sections, sections  # no mention, no bold


def test_an_exception_without_a_message_is_named_without_a_dangling_colon() -> None:
    assert replies.failure("probe", RuntimeError()).plain_text().endswith("`probe` failed:\n```\nRuntimeError\n```")


def test_a_reply_too_long_for_a_few_messages_is_a_file_with_a_preview() -> None:
    """A 1 MB text reply was split over every message it took: 80 on Slack (at one a second), 500 on Discord."""
    text = "\n".join(f"host {n}: ok " + "x" * 60 for n in range(15_000))
    message = replies.result(text, failed=False)
    slack = slack_blocks.render(message, lambda channel, thread: "")
    assert len(slack.messages) == 1 and [upload.content.decode() for upload in slack.uploads] == [text]
    discord = discord_render.render(message, "1")
    assert len(discord) <= 2 and [f.content.decode() for out in discord for f in out.files] == [text]
    assert [type(part).__name__ for part in replies.result("host 1: ok", failed=False).parts] == ["Text"]


async def test_a_reply_that_is_no_valid_message_fails_the_run_saying_why(tmp_path, config_path) -> None:
    """A message dict with a part of a kind Baton does not know broke the handling after the graph had finished:
    a traceback, "Something went wrong" in the thread, and a run left without its end (no turnaround, no
    run.failed in the audit log)."""
    def act(_state: State) -> dict[str, Any]:
        return {"reply": {"parts": [{"kind": "nope", "text": "x"}]}}  # type: ignore[typeddict-item]

    async with _asked(tmp_path, config_path, GraphSpec(name="odd", graph=_one_node(act)), "odd") as baton:
        shown = await _reply(baton, "1")
        assert shown.startswith("*Run failed*\n`odd` failed:\n```\nReplyNotShown: its reply is not a message: parts.0:"), \
            shown
        assert "nope" in shown
        async with baton.db.read() as session:
            run = (await session.exec(select(Run))).one()
            audited = (await session.exec(select(AuditEntry.kind).where(AuditEntry.kind.like("run.%")))).all()  # type: ignore[attr-defined]
        assert run.status == "failed" and run.turnaround_ms is not None
        assert "run.failed" in audited


async def test_a_graph_that_fails_with_an_error_and_no_reply_shows_the_error(tmp_path, config_path) -> None:
    def act(_state: State) -> dict[str, Any]:
        return {"error": "the deploy API said 503"}

    async with _asked(tmp_path, config_path, GraphSpec(name="deploy", graph=_one_node(act)), "deploy") as baton:
        assert await _reply(baton, "1") == "The run failed: the deploy API said 503"


async def test_a_plain_interrupt_longer_than_a_card_shows_its_whole_value(tmp_path, config_path) -> None:
    """interrupt(value) of more than a card's 3,000 characters was cut silently: the approver decided on a
    question whose end they never saw."""
    question = "Apply this plan?\n" + "step\n" * 1000 + "and finally: drop the old database"

    def ask(_state: State) -> State:
        return {"reply": str(interrupt(question))}

    async with _asked(tmp_path, config_path, GraphSpec(name="plan", graph=_one_node(ask)), "plan") as baton:
        card = await _reply(baton, "1")
        async with baton.db.read() as session:
            approval = (await session.exec(select(Approval))).one()
    assert approval.details == {"the whole question": question}
    assert len(approval.summary) <= 3000 and approval.summary.endswith("(cut here: the whole of it is below)")
    assert "and finally: drop the old database" in card, card[-300:]


def _picky(_request: Any, _text: str) -> dict[str, Any]:
    raise ValueError("say which service: web, api or worker")


async def test_a_request_the_models_graph_cannot_read_is_answered_with_the_reason(
        tmp_path, config_path, monkeypatch) -> None:
    """Routed by the model (or picked on a choice card) to a graph whose make_input refused the request, the
    requester read 'Something went wrong while handling this; it was logged.'"""
    script_path = tmp_path / "script.json"
    monkeypatch.setenv("BATON_TEST_MODEL_SCRIPT", str(script_path))
    script(script_path, [
        {"tool_calls": [{"name": "GraphGuess", "id": "g1", "args": {"graph": "scale", "confidence": 0.9}}]},
        {"tool_calls": [{"name": "GraphGuess", "id": "g2", "args": {
            "graph": "scale", "confidence": 0.4, "alternatives": ["help"]}}]},
    ])
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'm.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground", BATON_MODEL="python:tests.fake_models:scripted")
    async with Baton(settings) as baton:
        baton.registry.add(GraphSpec(name="scale", graph=_one_node(lambda _state: {"reply": "scaled"}),
                                     make_input=_input_told("scale", _picky)))
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="make it bigger", addressed=True))
        assert "`scale` could not read this request: say which service" in await _reply(baton, "1")

        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="2",
                                                  event_id="e2", user="alice", text="hmm, the thing?", addressed=True))
        await _reply(baton, "2")  # the "which one?" card
        async with baton.db.read() as session:
            card = (await session.exec(select(Approval).where(Approval.kind == "choice"))).one()
        await baton.accept_click(InboundClick(platform="playground", channel="general", thread="2", event_id="c1",
                                              user="alice", approval_id=card.id, action="scale"))
        told = await asyncio.wait_for(_said_to(baton, "alice", "could not read"), 20)  # to the chooser only
        assert "`scale` could not read this request: say which service" in told
        async with baton.db.read() as session:
            assert (await session.get(Approval, card.id)).status == "pending"  # type: ignore[union-attr]


async def _said_to(baton: Baton, user: str, contains: str) -> str:
    while True:
        async with baton.db.read() as session:
            found = [row.text for row in (await session.exec(select(PlaygroundMessage).where(
                PlaygroundMessage.is_bot, PlaygroundMessage.visible_to == user))).all() if contains in row.text]
        if found:
            return found[-1]
        await baton.outbox.wait("never-woken", 0.05)


@pytest.mark.parametrize(("reply", "code"), [
    ("Here:\n```bash\nls -la\n```", "ls -la"),      # a language after the fence is no line of the code
    ("```\ndf\n/dev/vda 23G\n```", "df\n/dev/vda 23G"),  # nothing after the fence: its next line is code
    ("run ```uptime``` now", "uptime"),             # inline, one line: the code itself
])
def test_a_fenced_blocks_language_is_not_shown_as_its_first_line(reply: str, code: str) -> None:
    """A graph's text reply "```bash\\nls\\n```" became the code "bash\\nls": Slack and Discord showed `bash` as the
    output's first line."""
    message = replies.result(reply, failed=False)
    assert [part.text for part in message.parts if part.kind == "code"] == [code]


@pytest.mark.parametrize("said", [
    "cannot read " + b"caf\xe9.txt".decode("utf-8", "surrogateescape"),  # a file name as os.listdir() gives it
    "the build printed a\x00b",  # a NUL of a command's output: PostgreSQL's text refuses it
], ids=["lone-surrogate", "nul"])  # a test id holding a lone surrogate stops pytest-xdist
async def test_a_node_failing_with_text_no_database_stores_shows_its_error(database_url, config_path, said) -> None:
    """The thread read "Something went wrong while handling this" and the run's error was UnicodeEncodeError or
    psycopg's DataError: the graph's own error was lost, from the thread and from ``baton threads``."""
    def act(_state: State) -> State:
        raise ValueError(said)

    async with _asked_on(database_url, config_path, GraphSpec(name="reader", graph=_one_node(act)), "reader") as baton:
        shown = await _reply(baton, "1")
        async with baton.db.read() as session:
            run = (await session.exec(select(Run))).one()
    storable = said.replace("\x00", "\ufffd").replace("\udce9", "\ufffd")
    assert shown == f"*Run failed*\n`reader` failed in `act`:\n```\nValueError: {storable}\n```", shown
    assert run.status == "failed" and run.error == storable


async def test_a_reply_made_storable_with_the_kit_is_shown_on_every_database(database_url, config_path) -> None:
    """README: on PostgreSQL a state's text may hold no NUL (its checkpoint is jsonb): ``bot.kit.storable`` first."""
    from bot.kit import storable

    def act(_state: State) -> State:
        return {"reply": storable("build log: a\x00b")}

    async with _asked_on(database_url, config_path, GraphSpec(name="log", graph=_one_node(act)), "log") as baton:
        assert await _reply(baton, "1") == "build log: a\ufffdb"
