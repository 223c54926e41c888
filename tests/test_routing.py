"""Routing of request text: commands, runbook arguments, patterns and the help fallback."""

from __future__ import annotations

import pytest

from bot.config import BatonConfig, load_config
from bot.kit import Request
from bot.registry import GraphRegistry
from bot.routing import RouteError, is_request, route
from tests.support import ROOT

CONFIG: BatonConfig = load_config(ROOT / "baton.yaml")
REGISTRY = GraphRegistry.discover()
REQUEST = Request(platform="playground", channel="general", thread="1", user="alice", text="")


def test_run_command_validates_arguments_and_fingerprints_them():
    first = route(REQUEST, "run restart service=web", REGISTRY, CONFIG)
    second = route(REQUEST, "run   restart  service=web", REGISTRY, CONFIG)
    assert first.graph == "runbook" and first.input == {"runbook": "restart", "args": {"service": "web"}}
    assert first.fingerprint == second.fingerprint and not first.force
    other = route(REQUEST, "run restart service=api force", REGISTRY, CONFIG)
    assert other.fingerprint != first.fingerprint and other.force
    shouted = route(REQUEST, "RUN Restart service=web", REGISTRY, CONFIG)  # names are lower case; values are not
    assert shouted.input == first.input and shouted.fingerprint == first.fingerprint


@pytest.mark.parametrize(("text", "message"), [
    ("run", "Which runbook?"),
    ("run nope", "I don't know a runbook called `nope`"),
    ("run upt\u202eime", "I don't know a runbook called `$'upt\\u202eime'`"),  # no bidi override quoted back
    ("run restart web", "is not a `key=value` argument"),
    ("run restart service=web service=api", "`service` is given twice"),
    ("run restart service=db", "does not match the allowed pattern"),
    ("run restart 'service=web;rm -rf /'", "does not match the allowed pattern"),
    ("run restart service=web;rm -rf /", "`service=web;rm` does not match the allowed pattern"),
    ("run uptime now=1", "unknown argument `now`. Usage: `run uptime` (no arguments). Nothing was run."),
])
def test_bad_runbook_requests_are_explained(text, message):
    with pytest.raises(RouteError) as error:
        route(REQUEST, text, REGISTRY, CONFIG)
    assert message in str(error.value)


def test_graph_names_and_fallback():
    assert route(REQUEST, "status", REGISTRY, CONFIG).graph == "status"
    assert route(REQUEST, "help", REGISTRY, CONFIG).fingerprint is None
    announce = route(REQUEST, "announce Lunch is served", REGISTRY, CONFIG)
    assert announce.graph == "announce" and announce.input == {"text": "Lunch is served"}
    fallback = route(REQUEST, "make coffee", REGISTRY, CONFIG)
    assert fallback.graph == "help" and fallback.input["text"] == "make coffee"
    # its thread is titled by what was asked: `baton threads` and `status` listed every such request as "help"
    assert fallback.title == "make coffee" and route(REQUEST, "", REGISTRY, CONFIG).title == "help"


def test_plain_words_with_apostrophes_are_not_a_quoting_error():
    fallback = route(REQUEST, "what's up with web?", REGISTRY, CONFIG)
    assert fallback.graph == "help" and fallback.unmatched
    with pytest.raises(RouteError, match="Check the quotes"):
        route(REQUEST, "run restart service='web", REGISTRY, CONFIG)


def test_free_text_reaches_its_graph_as_written_and_force_is_only_a_first_or_last_word():
    """Words were read shell-style and every `force` dropped: "do not force the door" lost a word,
    quotes and backslashes vanished from announcements."""
    for text in ('Please do not force the door open', 'The "new" build is out', r'Backslash C:\temp and a\b',
                 "line one\n  line two", "it's done"):
        announce = route(REQUEST, f"announce {text}", REGISTRY, CONFIG)
        assert announce.input == {"text": text} and not announce.force
    again = route(REQUEST, "announce Lunch is served force", REGISTRY, CONFIG)
    assert again.input == {"text": "Lunch is served"} and again.force
    assert again.fingerprint == route(REQUEST, "announce Lunch is served", REGISTRY, CONFIG).fingerprint
    first = route(REQUEST, "force announce Lunch is served", REGISTRY, CONFIG)
    assert first.input == {"text": "Lunch is served"} and first.force
    run = route(REQUEST, "force run restart service=web", REGISTRY, CONFIG)
    assert run.force and run.input == {"runbook": "restart", "args": {"service": "web"}}
    assert route(REQUEST, "run restart force service=web", REGISTRY, CONFIG).force
    # Graphs that never answer with a link take the word as text.
    summary = route(REQUEST, "summarize what we said about force", REGISTRY, CONFIG)
    assert summary.graph == "summarize" and not summary.force and summary.title.endswith("about force")


def test_runbook_values_are_fingerprinted_exactly(tmp_path) -> None:
    """``run echo word=Main`` after ``run echo word=main`` answered "the same request finished recently" and did
    not run: values were lower-cased and their spacing joined, and ``a="x b=y"`` read as ``a=x b=y``."""
    path = tmp_path / "baton.yaml"
    path.write_text('runbooks:\n  echo:\n    description: Echo.\n    command: ["echo", "{a}", "{b}"]\n'
                    '    args:\n      a: {pattern: "^[^;]*$"}\n      b: {pattern: "^[^;]*$", default: "-"}\n')
    config = load_config(path)

    def key(text: str) -> str | None:
        return route(REQUEST, text, REGISTRY, config).fingerprint

    assert key("run echo a=Main") != key("run echo a=main")
    assert key('run echo a="x  y"') != key('run echo a="x y"')
    assert key('run echo a="x b=y"') != key("run echo a=x b=y")
    assert key("run echo a=x b=y") == key("run   echo b=y   a=x")  # the same values, written otherwise


@pytest.mark.parametrize("text", ["run restart service=web`**[x](https://evil.example)**`",
                                  "run `**[x](https://evil.example)**`"])
def test_a_quoted_request_cannot_end_its_code_span(text: str) -> None:
    """A backtick in the request closed the `code` its quote was put in, and what followed showed as
    Baton's own words: a bold link to anywhere."""
    with pytest.raises(RouteError) as refused:
        route(REQUEST, text, REGISTRY, CONFIG)
    assert "ˋ**[x](https://evil.example)**ˋ`" in str(refused.value)
    assert str(refused.value).count("`") % 2 == 0


@pytest.mark.parametrize("text", ["run uptime", "force run uptime", "STATUS", "help me", "digest now",
                                  "run", "thanks!", "bob, can you look?", "announce maintenance at ten"])
def test_is_request_reads_a_text_as_route_does_without_building_its_input(text: str) -> None:
    """The check made for people talking in a busy thread, inside the acknowledging transaction: no graph's
    make_input runs there (an author's code holding the write lock)."""
    registry, built = GraphRegistry.discover(), []
    for spec in registry:
        spec.make_input = lambda request, args, make=spec.make_input: built.append(args) or make(request, args)
    request = Request(platform="playground", channel="general", thread="1", user="alice", text=text)
    try:
        routed = not route(request, text, registry, CONFIG).unmatched
    except RouteError:
        routed = True  # a command it cannot read: answered with the reason
    built.clear()
    assert is_request(text, registry) == routed and built == []


def test_usage_shows_an_argument_with_a_default_as_one_that_may_be_left_out(tmp_path) -> None:
    """``run echo`` answered "Usage: `run echo msg=<the message> loud=<shout it>`", so a reader gave ``loud=``
    though it has a default; it is in brackets now."""
    path = tmp_path / "baton.yaml"
    path.write_text('runbooks:\n  echo:\n    description: Echo.\n    command: ["echo", "{msg}", "{loud}"]\n'
                    '    args:\n      msg: {pattern: "^[a-z ]*$", description: the message}\n'
                    '      loud: {pattern: "^(yes|no)$", default: "no", description: shout it}\n')
    with pytest.raises(RouteError) as refused:
        route(REQUEST, "run echo", REGISTRY, load_config(path))
    assert "`run echo msg=<the message> [loud=<shout it>]`" in str(refused.value), str(refused.value)
