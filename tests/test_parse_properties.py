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
import yaml
from hypothesis import given, settings, strategies as st

from bot.config import BatonConfig, ConfigError, load_config
from bot.kit import Request
from bot.registry import GraphRegistry
from bot.routing import RouteError, aside, is_cancel, is_request, route, runbook_named
from tests.support import ROOT
from tests.test_graph_modules import GOOD_GRAPH

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


WORDS = st.sampled_from([
    "run", "RUN", "runbook", "force", "Force", "help", "?", "list", "status", "cancel", "cancel!", "approve",
    "reject.", "digest", "now", "announce", "summarize", "echo", "restart", "uptime", "service=web", "a=", "b=",
    "a=x", "a='x y'", "=", "'", '"', "\\", "\u201c", "\u201d", "\u2019", "\u00a0", "\u200b", "\u202e", "\uff57",
    "&lt;", "&amp;", "<@U0123ABCD>", "@baton", "{a}", "{b}", "-rf", " ", "\n", "\t", "`", "x" * 70])
TEXTS = st.one_of(st.text(CHARACTERS, max_size=60),
                  st.lists(st.one_of(WORDS, st.text(CHARACTERS, max_size=8)), max_size=8).map(" ".join),
                  st.lists(st.one_of(WORDS, st.text(CHARACTERS, max_size=8)), max_size=8).map("".join))


def test_any_text_is_routed_or_refused_in_a_sentence(tmp_path: Path) -> None:
    config = _config(tmp_path)

    @given(TEXTS, st.booleans())
    def check(text: str, addressed: bool) -> None:
        try:
            route(REQUEST, text, REGISTRY, config, addressed=addressed)
        except RouteError as refused:
            said = str(refused)
            assert said[:1].isupper() and len(said) > 20, said
        is_request(text, REGISTRY, addressed=addressed)
        aside(text, REGISTRY, addressed=addressed)
        is_cancel(text, addressed)
        runbook_named(text)

    check()


VALUES = st.one_of(st.text(CHARACTERS, max_size=40),
                   st.lists(st.sampled_from(["{a}", "{b}", "{}", "{{", "}}", "-", "--a=", " ", "=", "'", '"', "force",
                                             "\u00a0", "\u200b", "$(id)", ";", "\n", "x"]), max_size=6).map("".join))


def test_a_value_its_pattern_takes_reaches_the_command_as_one_argument_as_typed(tmp_path: Path) -> None:
    """However it is quoted, split or spaced, and whatever it holds: a placeholder is not filled again, nothing
    splits it, and its fingerprint is of the values alone (another order or spacing is the same request)."""
    config = _config(tmp_path)
    runbook = config.runbooks["echo"]

    @given(VALUES, st.sampled_from(["-", "v1", "x y"]))
    def check(value: str, other: str) -> None:
        quoted_value, quoted_other = shlex.quote(value), shlex.quote(other)
        asked = route(REQUEST, f"run echo a={quoted_value} b={quoted_other}", REGISTRY, config)
        assert asked.input == {"runbook": "echo", "args": {"a": value, "b": other}}
        assert runbook.argv(asked.input["args"]) == ["echo", value, f"--a={value}", other + value]
        again = route(REQUEST, f"  run   echo   b={quoted_other}\u00a0 {shlex.quote('a=' + value)}  ", REGISTRY, config)
        assert again.input == asked.input and again.fingerprint == asked.fingerprint and not again.force
        changed = route(REQUEST, f"run echo a={shlex.quote(value + 'x')} b={quoted_other}", REGISTRY, config)
        assert changed.fingerprint != asked.fingerprint

    check()


EVIL = st.sampled_from(["`EVIL`", "EVIL\n", "\nEVIL", "EVIL\u202e", "`**EVIL**`", "\u2028EVIL", "EVIL`"])
PIECES = st.sampled_from(["restart", "echo", "uptime", "service", "a", "b", "=", "web", "--", "-", ":", "force", "<",
                          ">", "[", "]", "<one of web, api, worker>", "x" * 70, " ", "'", '"'])


def test_the_words_of_a_refused_run_request_stay_in_their_code_spans(tmp_path: Path) -> None:
    """``run restart a`**[x](https://evil.example)**`=1`` was answered "unknown argument `a`**[x](...)**``": the
    name's backtick ended the code span, and the link showed as Baton's own words."""
    config = _config(tmp_path)

    @given(st.sampled_from(["restart", "echo", "uptime", "nope"]),
           st.lists(st.lists(st.one_of(EVIL, PIECES), min_size=1, max_size=5).map("".join), max_size=5))
    def check(name: str, words: list[str]) -> None:
        text = f"run {name} " + " ".join(shlex.quote(word) for word in words)
        try:
            route(REQUEST, text, REGISTRY, config)
        except RouteError as refused:
            said = str(refused)
            assert not any("EVIL" in prose for prose in said.split("`")[::2]), said
            assert not re.search("[\n\u2028\u202e]", said), said

    check()
    with pytest.raises(RouteError) as refused:
        route(REQUEST, "run restart a`**[x](https://evil.example)**`=1", REGISTRY, config)
    assert "unknown argument `aˋ**[x](https://evil.example)**ˋ`;" in str(refused.value), str(refused.value)


@pytest.mark.parametrize(("text", "said"), [
    ("run uptime\u200b", "I don't know a runbook called `$'uptime\\u200b'`. Did you mean `uptime`?"),
    ("run r\u0435start service=web", "I don't know a runbook called `$'r\\u0435start'`. Did you mean `restart`?"),
    ("run \uff55ptime", "I don't know a runbook called `$'\\uff55ptime'`."),
    ("run restart s\u0435rvice=web", "unknown argument `$'s\\u0435rvice'`"),
    ("run restart service\u200b=web", "Did you mean `service=` for `$'service\\u200b'=`?"),
    ("run restart service web\u200b", "`$'web\\u200b'` is not a `key=value` argument"),
    ("run restart service=web service\u00ad=api service\u00ad=api", "`$'service\\u00ad'` is given twice"),
])
def test_a_name_that_reads_as_another_is_quoted_as_what_it_is(tmp_path: Path, text: str, said: str) -> None:
    """A name pasted with a zero-width space or typed with a Cyrillic letter was quoted as if it were the right one:
    "I don't know a runbook called `uptime`. Did you mean `uptime`?". It is shown as a refused value is."""
    with pytest.raises(RouteError) as refused:
        route(REQUEST, text, REGISTRY, _config(tmp_path))
    assert said in str(refused.value), str(refused.value)


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

    @settings(max_examples=100)  # a file written and read each: 100 find what 1,000 did
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


@pytest.mark.parametrize(("pattern", "said"), [
    ("^[0-9]{1,9999999999}$", "invalid regular expression: the repetition number is too large"),
    ("(" * 1000 + "a" + ")" * 1000, "invalid regular expression: its groups are nested too deeply to read"),
])
def test_a_pattern_re_cannot_take_is_named_with_its_line(tmp_path: Path, pattern: str, said: str) -> None:
    """A count over 4,294,967,295 (OverflowError) or groups nested a thousand deep (RecursionError) are not re.error:
    Baton stopped with a traceback instead of the pattern's line."""
    path = tmp_path / "baton.yaml"
    path.write_text(f"runbooks:\n  x:\n    description: x\n    command: [echo, '{{v}}']\n    args:\n"
                    f"      v: {{pattern: '{pattern}'}}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value) == f"{path}: line 6: runbooks.x.args.v.pattern: {said}", str(refused.value)


def test_a_character_escaped_as_json_escapes_it_is_read_as_that_character(tmp_path: Path) -> None:
    """JSON (and a tool writing YAML as JSON) escapes 😀 as its two UTF-16 halves, ``"\\ud83d\\ude00"``: PyYAML kept
    the halves, which are no text, and Baton stopped with a UnicodeEncodeError (pydantic's own, quoting the value) or
    took a runbook whose command could never be passed. A half without its other half is refused with its line."""
    path = tmp_path / "baton.yaml"
    path.write_text('runbooks:\n  x:\n    description: "\\ud83d\\ude00 Up."\n    command: [echo, "\\ud83d\\ude00"]\n'
                    'digests:\n  - {platform: playground, channel: ops, cron: "0 9 * * *",\n'
                    '     timezone: "\\ud83d\\ude00"}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value) == (f"{path}: line 7: digests.0: I don't know the time zone `\U0001f600`. Use an IANA "
                                  "name like `Europe/Paris` or `UTC`."), str(refused.value)
    path.write_text(path.read_text(encoding="utf-8").split("digests:")[0], encoding="utf-8")
    runbook = load_config(path).runbooks["x"]
    assert runbook.description == "\U0001f600 Up." and runbook.command == ["echo", "\U0001f600"]
    path.write_text('runbooks:\n  x:\n    description: Up.\n    command: [echo, "\\ud83d\\ude00", "a\\ude00"]\n',
                    encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value) == (f"{path}: line 4: \\ude00 is half of a character (a UTF-16 surrogate) without its "
                                  "other half: write the character itself, or both halves"), str(refused.value)


GRAPH_MODULE = GOOD_GRAPH  # a module with a graph and nothing else


@pytest.mark.parametrize(("patterns", "said"), [
    (r"[r'^(\w+\s?)+!$']", r"PATTERNS: '^(\\w+\\s?)+!$' repeats a repetition that can split a text in many ways"),
    (r"[r'^ship (web|api)-? now$', r'(?i)^deploy (\w+\s*)+$']", r"PATTERNS: '(?i)^deploy (\\w+\\s*)+$' repeats a"),
    ("['a{9999999999}']", "PATTERNS: 'a{9999999999}' is not a regular expression: the repetition number is too large"),
])
def test_a_graphs_pattern_that_takes_forever_or_that_re_cannot_take_is_named(tmp_path: Path, monkeypatch,
                                                                              patterns: str, said: str) -> None:
    """A graph's PATTERNS are searched in every request and every remark in a Baton thread: ``^(\\w+\\s?)+!$`` was
    taken, and a remark of 30 letters held up all of Baton for minutes (a runbook argument's pattern of that shape
    is refused). ``a{9999999999}`` stopped start-up with a traceback (OverflowError), naming no module."""
    from bot.registry import GraphError
    name = f"parse_graphs_{abs(hash(patterns))}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "deploy.py").write_text(GRAPH_MODULE + f"PATTERNS = {patterns}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(GraphError) as refused:
        GraphRegistry.discover(name)
    assert said in str(refused.value) and "deploy.py" in str(refused.value), str(refused.value)


def test_a_did_you_mean_request_is_the_request_meant_when_copied_back(tmp_path: Path) -> None:
    """``run echo a = <value>`` is answered "Did you mean `run echo a=<value>`?", to be copied back. The suggestion
    was cut at 300 characters without a sign (copied back, it ran a shorter value, or could not be read for its
    unclosed quote), and showed a line break or a tab-like control as a space and a backtick as ˋ (another value)."""
    config = _config(tmp_path)

    @given(st.text(CHARACTERS, min_size=1, max_size=12) | st.sampled_from(["x" * 400, "a`b", "a\nb", "a\u202eb"]),
           st.sampled_from(["a = {v}", "a= {v}", "a ={v}", "--a {v}", "--a={v}", "a:{v}", "a {v}"]))
    def check(value: str, form: str) -> None:
        try:
            route(REQUEST, "run echo " + form.format(v=shlex.quote(value)), REGISTRY, config)
            return
        except RouteError as refused:
            offered = re.search(r"Did you mean `(run .*)`\? Usage", str(refused))
        if offered:
            assert route(REQUEST, offered[1], REGISTRY, config).input["args"]["a"] == value, offered[1]

    check()
    with pytest.raises(RouteError) as refused:
        route(REQUEST, "run echo a = " + "x" * 400, REGISTRY, config)
    assert "Did you mean" not in str(refused.value) and "Usage: `run echo a=<anything>" in str(refused.value)


def test_the_runbook_a_run_names_is_read_as_route_reads_it(tmp_path: Path) -> None:
    """``runbook_named`` says which runbook's approvers may cancel a run (and how the run is named): it read
    `run “restart” service=“web”`, which ran `restart`, as naming `“restart”`, and `run\\u2028restart` as no run at
    all, so that any runbook's approvers, not `restart`'s own, could cancel it."""
    config = _config(tmp_path)
    words = st.sampled_from(["run", "RUN", "runbook", "force", "restart", "uptime", "echo", "service=web", "a=x",
                             "\u201crestart\u201d", "re\u201cstart\u201d", "\u2018uptime\u2019", "a=it\u2019s",
                             "service=\u201cweb\u201d", "a=\u201cx y\u201d", "'", '"', "\u201c", "\u2019"])
    spaces = st.sampled_from([" ", "  ", "\u00a0", "\u2028", "\x85", "\x1c", "\t", "\n", "\u3000"])

    @given(st.sampled_from(["run", "RUN", "runbook", "force run", "run force"]), spaces,
           st.lists(st.tuples(words, spaces), min_size=1, max_size=4))
    def check(command: str, space: str, parts: list[tuple[str, str]]) -> None:
        text = command + space + "".join(word + space for word, space in parts)
        try:
            asked = route(REQUEST, text, REGISTRY, config)
        except RouteError:
            return
        if asked.graph == "runbook":
            assert runbook_named(text) == asked.input["runbook"], text

    check()
    assert runbook_named("run \u201crestart\u201d service=\u201cweb\u201d") == "restart"
    assert runbook_named("run\u2028restart service=web") == "restart"


def test_any_space_between_the_words_of_a_run_separates_them(tmp_path: Path) -> None:
    """The words of a run were split at ASCII's and Unicode's spaces, but its first word at any break str.split()
    knows: `run\\u2028restart` ran restart, `run restart\\u2028service=web` asked for a runbook of that name. Inside
    quotes, a value keeps what it holds."""
    config = _config(tmp_path)
    spaces = st.sampled_from([char for char in map(chr, range(0x3001)) if char.isspace()])

    @given(spaces, spaces, spaces)
    def check(first: str, second: str, inside: str) -> None:
        asked = route(REQUEST, f"run{first}restart{second}service=web", REGISTRY, config)
        assert asked.input == {"runbook": "restart", "args": {"service": "web"}}
        quoted = route(REQUEST, f"run echo{second}a='x{inside}y'", REGISTRY, config)
        assert quoted.input["args"]["a"] == f"x{inside}y"

    check()


def test_an_example_chat_would_refuse_for_an_argument_given_twice_is_named(tmp_path: Path) -> None:
    """``example: run restart service=web service=api`` was taken (the second value read), and help showed it as how
    to ask; asked, it was refused: "`service` is given twice"."""
    path = tmp_path / "baton.yaml"
    path.write_text(RUNBOOKS.replace("    risk: high\n", "    risk: high\n    example: run restart service=web "
                                     "service=api\n"), encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    said = str(refused.value)
    assert said == (f"{path}: line 15: runbook 'restart': its example `run restart service=web service=api` "
                    "would be refused if asked: 'service' is given twice"), said
    with pytest.raises(RouteError, match="`service` is given twice"):
        route(REQUEST, "run restart service=web service=api", REGISTRY, _config(tmp_path))


@pytest.mark.parametrize("pattern", [r"^(a|aa)+$", r"^(\d|\d\d)+$", r"^(a|a)*$", r"^(a(?=a)|a)+$",
                                     r"^(?:web|webweb)+$"])
def test_alternatives_that_split_a_value_two_ways_in_a_repetition_are_refused(tmp_path: Path, pattern: str) -> None:
    """``^(\\d|\\d\\d)+$`` was taken, and checking 40 digits and a letter took minutes (every split of the digits in
    ones and twos), in the event loop: ``re`` reads it as ``\\d(?:|\\d)``, nothing or a digit the next turn could
    take as well."""
    from bot.config import Argument
    with pytest.raises(ValueError, match="repeats a repetition that can split a text in many ways"):
        Argument(pattern=pattern)
    path = tmp_path / "baton.yaml"
    path.write_text(f"runbooks:\n  x:\n    description: x\n    command: [echo, '{{v}}']\n    args:\n"
                    f"      v: {{pattern: '{pattern}'}}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line 6: runbooks.x.args.v.pattern: the pattern repeats a repetition"):
        load_config(path)


@pytest.mark.parametrize("pattern", [
    r"^(a|ab)+$", r"^(?:foo|foobar)+$", r"^(?:x(?:web|webweb))+$", r"^(web|api|worker)(,(web|api|worker))*$",
    r"^(?:x(?:y|)z)+$",
    r"^((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)$", r"^(?:[a-z](?:-|))+$", r"^(?:a|b?)+$",
    r"^(?:(?:dev|staging|prod)-)*(?:web|api)$", r"^(?:Mon|Tue|Wed|Thu|Fri)(?:,(?:Mon|Tue|Wed|Thu|Fri))*$"])
def test_alternatives_that_take_a_value_one_way_are_kept(pattern: str) -> None:
    from bot.config import Argument
    assert Argument(pattern=pattern).pattern == pattern


@pytest.mark.parametrize("pattern", [
    r"^([a-z]+(?:-[a-z]+)*)(,[a-z]+(?:-[a-z]+)*)*$",  # web-1,api-eu: names with dashes, a comma between
    r"^(?:\d{1,3}(?:\.\d{1,3}){3})(?:,\d{1,3}(?:\.\d{1,3}){3})*$",  # addresses, a comma between
    r"^(?:[a-z]+(?:_[a-z]+)*\.)+[a-z]+$", r"^(-[a-z]+(=[a-z0-9]+)?)+$"])
def test_a_repetition_in_a_repetition_whose_turns_never_split_a_value_two_ways_is_kept(tmp_path: Path,
                                                                                       pattern: str) -> None:
    """Refused as "repeats a repetition": an inner repetition of more than one character (``(-[a-z]+)*``), or one
    followed by something that may be left out (``[a-z]+`` before ``(-[a-z]+)*``), was taken to be ambiguous, though
    the next character always says whether another turn begins (``-``, ``,``)."""
    from bot.config import Argument
    assert Argument(pattern=pattern).matches("a" * 999 + "!") is False  # decided at once: no turn is a choice
    path = tmp_path / "baton.yaml"
    path.write_text(f"runbooks:\n  x:\n    description: x\n    command: [echo, '{{v}}']\n    args:\n"
                    f"      v: {{pattern: '{pattern}'}}\n", encoding="utf-8")
    assert load_config(path).runbooks["x"].args["v"].pattern == pattern


@pytest.mark.parametrize(("pattern", "taken"), [
    ("^([\uac00-\ud7a3]+ ?)+$", False),  # Korean names, a space between: (\w+\s?)* in Hangul
    ("^([\u4e00-\u9fff]+)+$", False), ("^(\U0001f600+)+$", False), ("^(?:\uff41|\uff41\uff41)+$", False),
    ("^([\uac00-\ud7a3]+)( [\uac00-\ud7a3]+)*$", True), ("^([\u4e00-\u9fff]+-)*[\u4e00-\u9fff]+$", True)])
def test_a_repetition_of_characters_beyond_u3000_is_checked_as_any_other(pattern: str, taken: bool) -> None:
    """Two character classes were compared on U+0000-U+2FFF alone, so ``(a+)+`` written in Hangul, Han or emoji was
    taken, and 30 such letters and a "!" held up all of Baton for minutes. The characters a pattern names are
    compared too (two ranges that meet share the higher of their first characters)."""
    from bot.config import Argument
    if taken:
        assert Argument(pattern=pattern).pattern == pattern
    else:
        with pytest.raises(ValueError, match="repeats a repetition"):
            Argument(pattern=pattern)


def test_a_value_whose_check_against_its_pattern_takes_too_long_is_refused_and_baton_goes_on(tmp_path: Path) -> None:
    """A pattern the load-time check lets through (a back reference it does not analyse) that backtracks without
    end on a value that almost matches: re held the event loop, and so every chat of every team, for minutes on a
    40-letter value. The check is stopped (``MATCH_SECONDS``) and the request refused in words; a value that
    matches, or plainly does not, is read as before."""
    path = tmp_path / "baton.yaml"
    path.write_text('runbooks:\n  x:\n    description: X.\n    command: [echo, "{word}"]\n'
                    '    args:\n      word: {pattern: "^(?:(a)|\\\\1)+$"}\n', encoding="utf-8")
    runbook = load_config(path).runbooks["x"]
    assert runbook.validate_args({"word": "aaaa"}) == {"word": "aaaa"}
    with pytest.raises(ValueError) as refused:
        runbook.validate_args({"word": "a" * 40 + "b"})
    assert str(refused.value) == (f"`word={'a' * 40}b` could not be checked against the allowed pattern "
                                  "`^(?:(a)|\\1)+$` in time (stopped after 0.2 s): ask whoever keeps baton.yaml to "
                                  "write that pattern otherwise"), str(refused.value)
    with pytest.raises(ValueError, match="does not match the allowed pattern"):
        runbook.validate_args({"word": "b"})


def test_a_graphs_pattern_whose_search_takes_too_long_is_stopped_and_counts_as_not_found(
        tmp_path: Path, monkeypatch, caplog) -> None:
    """A graph's pattern that the start-up check lets through (a back reference it does not analyse) and that
    backtracks without end on a remark that almost matches: every request and every remark in a Baton thread is
    searched with it, and re held Baton's event loop, so every chat, for minutes. The search is stopped
    (``PATTERN_SECONDS``), the remark is not taken for the graph's, and the log says which pattern to rewrite.
    Flags are kept as re reads them (re.ASCII is another flag's number in regex)."""
    name = "parse_graphs_slow_search"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "aaa.py").write_text(GRAPH_MODULE + "import re\nEXAMPLE = 'aaa'\n"
                                            "PATTERNS = [r'^(?:(a)|\\1)+$', re.compile(r'^\\w+ ok$', re.ASCII)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = GraphRegistry.discover(name)
    spec = registry.get("aaa")
    assert spec is not None and spec.matches("aaa") and is_request("aaa", registry, addressed=False)
    assert spec.matches("deja ok") and not spec.matches("déjà ok")
    remark = "a" * 40 + "b"
    assert not is_request(remark, registry, addressed=False) and not spec.matches(remark)
    stopped = [r.getMessage() for r in caplog.records if "was stopped after" in r.getMessage()]
    assert stopped and stopped[0].startswith("graphs.aaa: searching PATTERNS '^(?:(a)|\\\\1)+$' in a message of 41 "
                                             "characters was stopped after 0.1 s (taken as not found)"), stopped


@pytest.mark.parametrize(("runbook", "said"), [
    ('    command: [echo, "a\\0b"]\n', "line 4: runbooks.x.command: part 1: holds a NUL character (\\0), which no "
                                      "command can be given: every run would fail; remove it"),
    ('    command: [echo, "{w}"]\n    args:\n      w: {pattern: "^.*$", default: "a\\0"}\n',
     "line 6: runbooks.x.args.w.default: the default holds a NUL character (\\0)"),
])
def test_a_nul_in_a_command_part_or_a_default_is_refused_with_its_line(tmp_path: Path, runbook: str, said: str) -> None:
    """YAML's "\\0" in a command part or an argument's default was taken, and every run of the runbook then failed
    ('could not start ...: embedded null byte')."""
    path = tmp_path / "baton.yaml"
    path.write_text("runbooks:\n  x:\n    description: X.\n" + runbook, encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert said in str(refused.value), str(refused.value)


@pytest.mark.parametrize("space", ["\u00a0", "\u2028", "\u3000", "\u00a0 "])
def test_an_example_whose_words_a_pasted_space_parts_loads_as_chat_takes_it(tmp_path: Path, space: str) -> None:
    """An ``example:`` was read with shlex.split (ASCII spaces only) while chat reads a request at every space and
    line break people paste (a no-break space from a wiki page): `run restart\\u00a0service=web` was refused at load
    ("not a request for this runbook") though chat ran the same request. Both read words as ``bot.words`` does."""
    example = f"run restart{space}service=web"
    path = tmp_path / "baton.yaml"
    path.write_text(RUNBOOKS.replace('    risk: high\n', f'    risk: high\n    example: "{example}"\n'),
                    encoding="utf-8")
    config = load_config(path, required=True)
    assert config.runbooks["restart"].example == example
    assert route(REQUEST, example, REGISTRY, config).input == {"runbook": "restart", "args": {"service": "web"}}


ARGUMENT_WORDS = st.sampled_from(["service=web", "service=db", "a=x", "a='x y'", "a=\"\u00a0\"", "b=", "c=1", "force",
                                   "'", "\u00a0", "\u200b", "restart"])
SPACES = st.sampled_from([" ", "  ", "\t", "\n", "\u00a0", "\u00a0 ", "\u2028", "\u3000", "\x1f", "\x85"])
RUN_REQUESTS = st.builds(lambda head, space, name, pairs: head + space + name + "".join(s + w for s, w in pairs),
                         st.sampled_from(["run", "runbook", "force run", "RUN"]), SPACES,
                         st.sampled_from(["restart", "echo", "uptime", "help", "force"]),
                         st.lists(st.tuples(SPACES, ARGUMENT_WORDS), max_size=4))


@settings(max_examples=300)
@given(st.one_of(RUN_REQUESTS, TEXTS))
def test_an_example_loads_exactly_when_chat_would_run_it(text: str) -> None:
    """What the load-time check of ``example:`` takes is what chat runs (typographic quotes aside: chat reads them
    as quotes only when nothing else reads, and an example is written at a keyboard)."""
    config = BatonConfig.model_validate(yaml.safe_load(RUNBOOKS))
    if set(text) & set("\u201c\u201d\u201e\u2018\u2019"):
        return
    try:
        routed = route(REQUEST, text, REGISTRY, config)
    except RouteError:
        routed = None
    for name, runbook in config.runbooks.items():
        runs = routed is not None and routed.graph == "runbook" and routed.input["runbook"] == name
        assert (runbook.model_copy(update={"example": text}).example_problem(name) == "") == runs, (name, routed)


def test_a_backtick_in_an_arguments_description_keeps_the_usage_lines_code_span_whole(tmp_path: Path) -> None:
    """An argument's ``description: use `web``` ended the usage line's code span inside it
    (`run restart service=<use `web`>`): `web` showed as code and the rest as Baton's words. It is shown as
    ``quoted_code`` shows a backtick (U+02CB), in the usage line, in help, and when the line is pasted back."""
    path = tmp_path / "baton.yaml"
    path.write_text(RUNBOOKS.replace('description: "one of web, api, worker"', 'description: "use `web` or `api`"'),
                    encoding="utf-8")
    config = load_config(path, required=True)
    shown = "run restart service=<use \u02cbweb\u02cb or \u02cbapi\u02cb>"
    assert config.runbooks["restart"].args["service"].description == "use `web` or `api`"
    for text in ("run restart service=db", "run", "run restart " + shown.split(" ", 2)[2]):
        with pytest.raises(RouteError) as refused:
            route(REQUEST, text, REGISTRY, config)
        said = str(refused.value)
        assert f"`{shown}`" in said and said.count("`") % 2 == 0, said
    with pytest.raises(RouteError, match="stands for a value"):
        route(REQUEST, shown, REGISTRY, config)
