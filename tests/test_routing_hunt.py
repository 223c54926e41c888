"""Routing as people write requests: a graph's name with a question mark after it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import load_config
from bot.kit import Request
from bot.registry import GraphRegistry
from bot.routing import aside, is_request, route
from tests.test_help_hunt import _answer

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
