"""Properties of how Baton reads what people type and what baton.yaml says (hypothesis, the derandomized profile of
conftest): any text is routed or refused in a sentence; a value a runbook's pattern takes reaches its command as one
argument, as typed; a refusal keeps the request's words inside its code spans and shows a name that reads as another
as what it is; any edit of baton.yaml loads or is refused naming a line.

Each test that pins a fix says what was wrong; each failed on the code before that fix.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from bot.config import BatonConfig, ConfigError, load_config
from bot.kit import Request
from bot.registry import GraphRegistry
from bot.routing import RouteError, aside, is_cancel, is_request, route, runbook_named
from tests.support import ROOT

REGISTRY = GraphRegistry.discover()
REQUEST = Request(platform="playground", channel="general", thread="1", user="alice", text="")
# What reaches routing: an adapter's text made storable (bot.messages.storable: no NUL, no lone surrogate).
CHARACTERS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
RUNBOOKS = '''approvers: [alice]
runbooks:
  echo:
    description: Echo.
    command: ["echo", "{a}", "--a={a}", "{b}{a}"]
    args:
      a: {pattern: "(?s)^.*$", description: anything}
      b: {pattern: "^[^;]*$", default: "-"}
  restart:
    description: Restart a service.
    command: ["true", "{service}"]
    args:
      service: {pattern: "^(web|api|worker)$", description: "one of web, api, worker"}
    risk: high
  uptime:
    description: Up.
    command: ["uptime"]
'''


def _config(tmp_path: Path) -> BatonConfig:
    path = tmp_path / "baton.yaml"
    path.write_text(RUNBOOKS, encoding="utf-8")
    return load_config(path, required=True)


SHIPPED = (ROOT / "baton.yaml").read_text(encoding="utf-8").splitlines()
SNIPPETS = st.sampled_from([
    "", "~", "yes", "0", "-1", "1e999", ".nan", "0x10", "0755", "[]", "{}", "[a, b]", "{a: 1}", "'{x}'", "{x}",
    "&a x", "*a", "*nope", "(a+)+$", "'(a+)+$'", "'['", "2024-02-30", "2024-13-01", "2024-01-01", "!!int x",
    "!!float x", "!!bool x", "!!timestamp x", "!!binary 'é'", "!!set [a]", "!!python/name:os.system x", "!x y",
    "99999999999999999999999999", "<<: {a: 1}", "|\n  x", "- x", "a: b: c", "'\u202e'", "\t", "[[[[]]]]"])
EDITS = st.sampled_from(["value", "key", "delete", "repeat", "indent", "dedent"])


def _edited(edits: list[tuple[int, str, str]]) -> str:
    lines = list(SHIPPED)
    for at, edit, snippet in edits:
        at %= len(lines)
        line, indent = lines[at], " " * (len(lines[at]) - len(lines[at].lstrip()))
        if edit == "value" and ":" in line:
            lines[at] = f"{line.split(':', 1)[0]}: {snippet}"
        elif edit == "value" and line.lstrip().startswith("- "):
            lines[at] = f"{indent}- {snippet}"
        elif edit == "key" and ":" in line:
            lines[at] = f"{indent}{snippet}:{line.split(':', 1)[1]}"
        elif edit == "delete" and len(lines) > 1:
            del lines[at]
        elif edit == "repeat":
            lines.insert(at, line)
        elif edit == "indent":
            lines[at] = "  " + line
        elif edit == "dedent":
            lines[at] = line.removeprefix("  ")
    return "\n".join(lines) + "\n"


def test_any_edit_of_baton_yaml_loads_or_is_refused_naming_a_line(tmp_path: Path) -> None:
    """The shipped baton.yaml with a few lines edited (a value of another type, a tag, a key, a line repeated,
    moved or gone): it loads, or every line of the refusal names a line. A date that is none (``2024-02-30``) or a
    tag asking for what a value is not (``!!int x``) stopped Baton with Python's own traceback."""
    path = tmp_path / "baton.yaml"

    @given(st.lists(st.tuples(st.integers(0, len(SHIPPED) - 1), EDITS, SNIPPETS), min_size=1, max_size=3))
    def check(edits: list[tuple[int, str, str]]) -> None:
        path.write_text(_edited(edits), encoding="utf-8")
        try:
            load_config(path)
        except ConfigError as refused:
            for problem in str(refused).splitlines():
                assert re.match(rf"{re.escape(str(path))}: (line \d+: |and \d+ more problems)", problem), problem

    check()


@pytest.mark.parametrize(("text", "said"), [
    ("approvers: [alice]\nrunbooks:\n  up:\n    description: Up.\n    command: [echo, 2024-02-30]\n",
     "line 5: not valid YAML: YAML reads '2024-02-30' as a date, and it is none (day is out of range for month): "
     "put it in quotes if it is text"),
    ("approvers:\n  - alice\n  - !!int bob\n", "line 3: not valid YAML: its tag asks for a whole number, and 'bob' "
     "is none: remove the tag, or write a whole number"),
    ("approvers: [alice]\n!!float x: 1\n", "line 2: not valid YAML: its tag asks for a number, and 'x' is none"),
    ("digests:\n  - platform: playground\n    channel: ops\n    cron: !!bool sometimes\n",
     "line 4: not valid YAML: its tag asks for true or false, and 'sometimes' is none"),
])
def test_a_value_yaml_cannot_make_what_it_reads_it_as_is_named_with_its_line(tmp_path: Path, text: str,
                                                                            said: str) -> None:
    """PyYAML's own errors (``ValueError: day is out of range for month``) with a traceback, and no line."""
    path = tmp_path / "baton.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert f"{path}: {said}" in str(refused.value), str(refused.value)


def test_a_runbook_cannot_be_named_force(tmp_path: Path) -> None:
    """``run force`` drops the word, as any ``force`` of a run request: it answered "Which runbook?" and listed
    ``run force`` among them, a runbook nobody could ever ask for."""
    path = tmp_path / "baton.yaml"
    path.write_text("runbooks:\n  uptime:\n    description: Up.\n    command: [uptime]\n"
                    "  force:\n    description: Force a sync.\n    command: [sync]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value).startswith(f"{path}: line 5: runbooks: the runbook name 'force' is a word of "
                                         "Baton's own"), str(refused.value)
