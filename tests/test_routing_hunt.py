"""Routing as people write requests: a graph's name with a question mark after it, `force` in a request the
model routed, a graph's example as help shows it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlmodel import select

from adapters.playground import PlaygroundAdapter, PostClick
from bot.app import Baton
from bot.config import load_config
from bot.kit import Request
from bot.registry import GraphError, GraphRegistry
from bot.routing import aside, is_request, route, route_to
from bot.model_routing import guess as route_guess
from storage.models import Approval, PlaygroundMessage, Run, ThreadRecord
from tests.fake_models import script, scripted
from tests.test_graph_modules import GOOD_GRAPH, package  # noqa: F401 (package: a fixture)
from tests.test_help_hunt import _answer
from tests.test_models import guess
from tests.test_models_hunt2 import baton_with_model, bot_said, say

REGISTRY = GraphRegistry.discover()
REQUEST = Request(platform="playground", channel="general", thread="1", user="alice", text="")


@pytest.mark.parametrize(("text", "graph"), [("help?", "help"), ("Help!", "help"), ("status?", "status"),
                                             ("Status.", "status"), ("force status?", "status")])
def test_a_graphs_name_written_with_a_question_mark_is_that_graph(text: str, graph: str, config_path: Path) -> None:
    """`@baton help?` was answered "I don't know how to handle `help?` yet" (and sent to the model, when one is
    configured, at its cost); `@baton status?` in a thread waiting at a card was queued behind the card instead
    of answered beside it, as `cancel!` and `approve?` are read as their words."""
    chosen = route(REQUEST, text, REGISTRY, load_config(config_path))
    assert chosen.graph == graph and not chosen.unmatched
    assert is_request(text, REGISTRY, addressed=False)
    assert aside(text, REGISTRY, addressed=True) == graph
    assert aside(text, REGISTRY, addressed=False) == graph


async def test_help_with_a_question_mark_is_not_called_unknown(tmp_path: Path, config_path: Path) -> None:
    reply = await _answer(tmp_path, config_path, "help?")
    assert "Here is what I can do" in reply and "I don't know how to handle" not in reply, reply


def test_punctuation_after_a_graphs_name_does_not_make_talk_a_request(config_path: Path) -> None:
    """Only the name alone: "status? still red, bob" is people talking in a Baton thread."""
    config = load_config(config_path)
    assert route(REQUEST, "status? still red, bob", REGISTRY, config, addressed=False).unmatched
    assert not is_request("status? still red, bob", REGISTRY, addressed=False)
    assert aside("status? still red, bob", REGISTRY, addressed=False) is None


@pytest.mark.parametrize("text", ["Lunch is served force", "force Lunch is served", "FORCE Lunch is served"])
def test_force_in_a_request_the_model_routed_runs_it_again(text: str) -> None:
    """A request in plain words the model sent to a graph that answers repeats with a link: its `force` (first or
    last word, as help says) was taken for part of the request: the graph got "Lunch is served force" to announce,
    and a second "... force" was answered with a link to the first instead of running again."""
    request = Request(platform="playground", channel="general", thread="1", user="alice", text=text)
    chosen = route_to(REGISTRY, "announce", request, text)
    plain = route_to(REGISTRY, "announce", request, "Lunch is served")
    assert chosen.force and chosen.input == {"text": "Lunch is served"}
    assert chosen.fingerprint == plain.fingerprint and not plain.force


def test_force_means_nothing_to_a_graph_the_model_routed_that_never_links() -> None:
    """The assistant answers every request again: its words are its question, `force` included."""
    request = Request(platform="playground", channel="general", thread="1", user="alice", text="")
    chosen = route_to(REGISTRY, "assistant", request, "force push is refused, why?")
    assert chosen.input["text"] == "force push is refused, why?" and not chosen.force


async def test_a_model_routed_announcement_with_force_is_drafted_without_the_word(
        tmp_path: Path, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script_path = tmp_path / "script.json"
    monkeypatch.setenv("BATON_TEST_MODEL_SCRIPT", str(script_path))
    script(script_path, [{"tool_calls": [{"name": "GraphGuess", "id": "g1", "args": {
        "graph": "announce", "confidence": 0.95, "alternatives": []}}]}])
    reply = await _answer(tmp_path, config_path, "tell everyone lunch is served force",
                          BATON_MODEL="python:tests.fake_models:scripted")
    assert "📣 tell everyone lunch is served" in reply and "served force" not in reply, reply


@pytest.mark.parametrize(("example", "taken_by"), [
    ("run the nightly backup", "`run` (a command of Baton's own)"),
    ("force run the nightly backup", "`run` (a command of Baton's own)"),
    ("status of the nightly backup", "the graph `status`"),
    ("Help with the nightly backup", "the graph `help`"),
])
def test_an_example_whose_first_word_is_a_command_or_another_graph_is_refused(package, example: str,
                                                                              taken_by: str) -> None:
    """A graph reached by its PATTERNS, with an EXAMPLE beginning with a command or another graph's name: help
    listed `run the nightly backup`, and asking it as shown was answered "I don't know a runbook called `the`"
    (`status of the nightly backup` showed the channel's status): chat reads those words before any pattern."""
    name = package({"backup": f"EXAMPLE = {example!r}\nPATTERNS = [r'nightly backup']\n" + GOOD_GRAPH,
                    "status": GOOD_GRAPH, "help": GOOD_GRAPH})
    with pytest.raises(GraphError, match=re.escape(f"EXAMPLE {example!r} would not reach this graph: chat reads its "
                                                   f"first word as {taken_by}")):
        GraphRegistry.discover(name)


def test_an_example_reached_by_a_pattern_or_its_own_name_is_still_taken(package) -> None:
    name = package({"backup": "EXAMPLE = 'start the nightly backup'\nPATTERNS = [r'nightly backup']\n" + GOOD_GRAPH,
                    "restore": "EXAMPLE = 'restore backup'\n" + GOOD_GRAPH})
    assert [spec.example for spec in GraphRegistry.discover(name)] == ["start the nightly backup", "restore backup"]


@pytest.mark.parametrize(("answer", "graph", "options"), [
    (guess("Status.", 0.9), "status", []),
    (guess("summarize!", 0.9), "summarize", []),
    (guess(" `status.` ", 0.9), "status", []),
    (guess("none", 0.3, "status.", "`summarize`."), None, ["status", "summarize"]),
    ({"content": "status."}, None, ["status"]),  # the name in words, not in the schema: offered, never run
])
async def test_a_graph_name_the_model_ends_with_a_full_stop_is_that_graph(tmp_path: Path, monkeypatch, answer,
                                                                          graph, options) -> None:
    """A model answered `Status.` (sure of it) and the request was answered "I don't know how to handle" with the
    whole help: the name was looked up with its full stop. Quotes and capitals were read off it already."""
    script(tmp_path / "script.json", [answer])
    monkeypatch.setenv("BATON_TEST_MODEL_SCRIPT", str(tmp_path / "script.json"))
    routed = await route_guess(scripted(), "is anything running?", REGISTRY)
    assert (routed.graph, routed.options) == (graph, options)


async def test_a_request_picked_on_a_which_one_card_while_the_same_runs_gets_a_link(tmp_path: Path, config_path: Path,
                                                                                   monkeypatch) -> None:
    """"Tell everyone lunch is served", asked twice in a channel: the model unsure both times, both requesters picked
    `announce` on the "Which one?" card, and it ran twice (two announcements to approve). Routed by the model
    when sure, or by name, the second got a link to the first; a pick is a route as they are."""
    unsure = guess("announce", 0.4, "status")
    async with baton_with_model(tmp_path, config_path, monkeypatch, unsure, unsure) as baton:
        first = await say(baton, "@baton tell everyone lunch is served")
        await _pick(baton, await bot_said(baton, "Which one?", thread=first), "announce")
        await bot_said(baton, "Post this announcement?", thread=first)
        second = await say(baton, "@baton tell everyone lunch is served", user="bob")
        await _pick(baton, await bot_said(baton, "Which one?", thread=second), "announce", user="bob")
        await bot_said(baton, "The same request is waiting for approval in another thread, so I did not start it "
                              "again", thread=second)
        async with baton.db.read() as session:
            runs = (await session.exec(select(Run.graph, Run.status))).all()
            asked = (await session.exec(select(Approval).where(Approval.kind != "choice"))).all()
            picked = (await session.exec(select(ThreadRecord.status).where(ThreadRecord.thread == second))).one()
    assert picked == "done"  # its "Which one?" card was all it ran: it waits for nothing
    assert len(asked) == 1 and sorted(runs) == [("announce", "waiting"), ("choose", "done"), ("choose", "done")], runs


async def _pick(baton: Baton, card: str, graph: str, user: str = "alice") -> None:
    """``user`` picks ``graph`` on the "Which one?" card whose text is ``card``."""
    playground = next(adapter for adapter in baton.adapters if isinstance(adapter, PlaygroundAdapter))
    async with baton.db.read() as session:
        message = (await session.exec(select(PlaygroundMessage).where(PlaygroundMessage.text == card))).one()
        approval = (await session.exec(select(Approval).where(Approval.status == "pending",
                                                              Approval.kind == "choice"))).one()
    await playground.post_click(PostClick(message_id=message.id, approval_id=approval.id, action=graph, user=user))
