"""``baton.yaml``: approvers, runbooks and per-graph policy, validated with line numbers.

A runbook's command is an argument list with ``{placeholders}``; it is never run through a shell,
and every placeholder must be a declared argument with a validation pattern.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import json
import logging
import os
import re
import re._constants as re_constants  # what re parses a pattern into: no public API has it
import re._parser as re_parser
import shlex
import stat
import string
import unicodedata
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal, TypeVar

import regex
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from bot.schedules import ScheduleError, check_schedule, zone_name
from bot.lookalikes import quoted_as_is
from bot.messages import quoted_code, validation_words
from bot.settings import SECRET_VARIABLES
from bot.words import TYPOGRAPHIC_QUOTES, split_words

Risk = Literal["low", "high"]
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,40}$"
ARG_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,40}$"
VARIABLE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,100}$"  # an environment variable's name, as a shell takes it
# A pattern is matched in the event loop: on 4,000 characters ^.+@.+\..+$ took re 13 s, on 1,000 up to 1.4 s.
MAX_VALUE_CHARS = 1000
# How long a value is checked against its pattern before it is refused: the event loop serves everyone meanwhile,
# and a pattern the load-time check lets through may still backtrack for minutes on a value that almost matches.
MATCH_SECONDS = 0.2
FORCE_WORD = "force"  # in a request: "run it even if it ran just now" (read by bot.routing)


logger = logging.getLogger(__name__)


class ConfigError(Exception):
    """``baton.yaml`` is wrong; the message names the file, line and what is wrong."""


class PartError(ValueError):
    """A check of a whole object that found one part of it wrong: ``where`` is that part's key path below
    the object (``"command", "2"``), so that the message names the part's line, not the object's."""

    def __init__(self, message: str, *where: str) -> None:
        super().__init__(message)
        self.where = where


_REPEATS = (re_constants.MAX_REPEAT, re_constants.MIN_REPEAT)
_CATEGORIES = {re_constants.CATEGORY_DIGIT: r"\d", re_constants.CATEGORY_NOT_DIGIT: r"\D",
               re_constants.CATEGORY_SPACE: r"\s", re_constants.CATEGORY_NOT_SPACE: r"\S",
               re_constants.CATEGORY_WORD: r"\w", re_constants.CATEGORY_NOT_WORD: r"\W"}
_SAMPLE = [chr(code) for code in range(0x3000)]  # where two character classes are compared


def _repeats_a_repetition(items: Sequence[tuple[Any, Any]], after: list[tuple[Any, Any]], *, inside: bool,
                          ignore_case: bool) -> bool:
    """Whether a parsed pattern repeats a repetition that can split one text in several ways: Python's
    ``re`` then tries every split of a value that almost matches, 2^n of them for n characters (ReDoS).

    ``after`` is what follows ``items`` (within a repetition: its own start again, the next turn);
    ``inside``: ``items`` are inside a repetition. An inner repetition is safe when what must follow it is a
    character it cannot match (``([a-z]+-)*``, ``(-[a-z]+)*``); a possessive one or an atomic group gives
    nothing back, so it is safe too (what is inside it is still looked at).
    """
    for index, (op, value) in enumerate(items):
        rest = [*items[index + 1:], *after]
        if op in _REPEATS and value[1] > 1:
            if inside and not _stops_before(value[2], rest, ignore_case):
                return True
            if _alternatives_split_a_turn(value[2], ignore_case):
                return True
            if _repeats_a_repetition(value[2], list(value[2]), inside=True, ignore_case=ignore_case):
                return True
        elif op in _REPEATS:
            if _repeats_a_repetition(value[2], rest, inside=inside, ignore_case=ignore_case):
                return True
        elif op == re_constants.SUBPATTERN:
            if _repeats_a_repetition(value[3], rest, inside=inside, ignore_case=ignore_case):
                return True
        elif op == re_constants.BRANCH:
            if any(_repeats_a_repetition(branch, rest, inside=inside, ignore_case=ignore_case) for branch in value[1]):
                return True
        elif op in (re_constants.POSSESSIVE_REPEAT, re_constants.ATOMIC_GROUP, re_constants.ASSERT,
                    re_constants.ASSERT_NOT, re_constants.GROUPREF_EXISTS):
            parts = value[2] if op == re_constants.POSSESSIVE_REPEAT else value if op == re_constants.ATOMIC_GROUP \
                else value[1] if op != re_constants.GROUPREF_EXISTS else [*(value[1] or []), *(value[2] or [])]
            if _repeats_a_repetition(parts, [], inside=False, ignore_case=ignore_case):
                return True
    return False


REPEATS_A_REPETITION = ("repeats a repetition that can split a text in many ways (like (a+)+ or (\\w+\\s?)*, or "
                        "alternatives one of which the next turn can take, (a|aa)+)")
WRITE_IT_OTHERWISE = ("Write it without the nesting, separate the repetitions by a character the inner one cannot "
                      "match (([a-z]+-)*), or make the inner one possessive (a++) or atomic ((?>a+))")


def repeats_a_repetition(pattern: str, flags: int = 0) -> bool:
    """Whether ``pattern`` (a valid one) repeats a repetition that can split one text in several ways, as a runbook
    argument's pattern may not: ``re`` then tries every split of a text that almost matches (ReDoS)."""
    parsed = re_parser.parse(pattern, flags)
    return _repeats_a_repetition(parsed, [], inside=False, ignore_case=bool(parsed.state.flags & re.IGNORECASE))


def _alternatives_split_a_turn(body: Sequence[tuple[Any, Any]], ignore_case: bool) -> bool:
    """Whether a repetition's ``body`` takes one text in two ways at alternatives that follow something it
    consumed: ``(a|aa)+`` and ``(\\d|\\d\\d)+``, which ``re`` reads as ``a(?:|a)`` (after the ``a``: nothing, and
    the next turn's ``a``; or the alternative's ``a``), ``(a|a)*``."""
    items = list(body)
    consumed = False
    for index, (op, value) in enumerate(items):
        if op == re_constants.SUBPATTERN:  # its items, as if written in its place
            items[index + 1:index + 1] = value[3]
            continue
        if op == re_constants.BRANCH and consumed and _splits_two_ways(value[1], [*items[index + 1:], *body],
                                                                      ignore_case):
            return True
        consumed = consumed or not _may_be_empty([(op, value)])
    return False


def _splits_two_ways(branches: Sequence[Sequence[tuple[Any, Any]]], rest: list[tuple[Any, Any]],
                     ignore_case: bool) -> bool:
    """Whether alternatives inside a repetition can take one text in two ways, one of them matching nothing:
    ``(a|aa)+`` and ``(\\d|\\d\\d)+`` (``re`` reads them as ``a(?:|a)``: nothing, or an ``a`` the next turn could
    take as well), ``(a|a?)+``, ``(a|a)*`` (two alternatives that match nothing)."""
    empty = [branch for branch in branches if _may_be_empty(branch)]
    if len(empty) > 1:
        return True
    following = _character_test(_first_item(rest), ignore_case)
    for branch in branches:
        if empty and branch is not empty[0]:
            begins = _character_test(_first_item(list(branch)), ignore_case)
            if begins is None or following is None or _overlap(begins, following):
                return True
    return False


def _may_be_empty(items: Sequence[tuple[Any, Any]]) -> bool:
    """Whether ``items`` can match an empty text (what it does not know, a back reference, it says cannot)."""
    for op, value in items:
        if op in _REPEATS or op == re_constants.POSSESSIVE_REPEAT:
            if value[0] > 0 and not _may_be_empty(value[2]):
                return False
        elif op == re_constants.SUBPATTERN:
            if not _may_be_empty(value[3]):
                return False
        elif op == re_constants.ATOMIC_GROUP:
            if not _may_be_empty(value):
                return False
        elif op == re_constants.BRANCH:
            if not any(_may_be_empty(branch) for branch in value[1]):
                return False
        elif op not in (re_constants.AT, re_constants.ASSERT, re_constants.ASSERT_NOT):
            return False
    return True


def _stops_before(body: Sequence[tuple[Any, Any]], rest: list[tuple[Any, Any]], ignore_case: bool) -> bool:
    """Whether a repetition of ``body`` must be followed by a character no turn of it can begin with: whether to
    take another turn is then never a choice. ``(,[a-z]+(-[a-z]+)*)*`` was refused: its ``[a-z]+`` is followed by
    ``-`` or the next turn's ``,``, and its ``(-[a-z]+)*`` by ``,``."""
    if _may_be_empty(body):
        return False
    repeated, following = _first_chars(body, ignore_case), _first_chars(rest, ignore_case)
    return repeated is not None and following is not None and not _overlap(repeated, following)


_ENDS = (re_constants.AT_END, re_constants.AT_END_STRING)  # $ (or before a last line break), \Z


def _first_chars(items: Sequence[tuple[Any, Any]], ignore_case: bool) -> _Chars | None:
    """Whether a character can begin a text that ``items`` match, looking into groups, past what may match nothing
    (``-?``, ``(a|)``, ``\\b``) and into alternatives; ``None`` when this check cannot say (a back reference)."""
    tests: list[_Chars] = []
    items = list(items)
    while items:
        op, value = items[0]
        rest = items[1:]
        if op == re_constants.SUBPATTERN:
            items = [*value[3], *rest]
            continue
        if op == re_constants.AT and value in _ENDS:
            tests.append(_Chars(lambda char: char == "\n", "\n"))  # $ may stand before a last line break
            break
        if op in (re_constants.AT, re_constants.ASSERT, re_constants.ASSERT_NOT):  # matches no character
            items = rest
            continue
        if op in (*_REPEATS, re_constants.POSSESSIVE_REPEAT, re_constants.ATOMIC_GROUP, re_constants.BRANCH):
            parts = [value] if op == re_constants.ATOMIC_GROUP else value[1] if op == re_constants.BRANCH \
                else [value[2]]
            for part in parts:
                test = _first_chars(part, ignore_case)
                if test is None:
                    return None
                tests.append(test)
            skipped = (op in _REPEATS or op == re_constants.POSSESSIVE_REPEAT) and value[0] == 0
            if skipped or any(_may_be_empty(part) for part in parts):
                items = rest
                continue
            break
        test = _character_test(items[0], ignore_case)
        if test is None:
            return None
        tests.append(test)
        break
    return _Chars(lambda char: any(test(char) for test in tests), *(test.named for test in tests))


def _first_item(items: list[tuple[Any, Any]]) -> tuple[Any, Any] | None:
    """The item a text matching ``items`` must begin with, looking into groups; None when it may be skipped."""
    while items:
        op, value = items[0]
        if op != re_constants.SUBPATTERN:
            return items[0]
        items = list(value[3]) + items[1:]
    return None


class _Chars:
    """A test of characters, with the characters its pattern names: where two tests are compared besides
    ``_SAMPLE`` (``([가-힣]+ ?)+`` and ``(😀+)+`` were taken, their letters all beyond it)."""

    def __init__(self, test: Callable[[str], bool], *named: str | frozenset[str]) -> None:
        self.test = test
        self.named = frozenset(char for chars in named for char in chars)

    def __call__(self, char: str) -> bool:
        return self.test(char)


def _overlap(one: _Chars, other: _Chars) -> bool:
    """Whether a character passes both tests: two ranges that meet share the higher of their first characters."""
    return any(one(char) and other(char) for char in itertools.chain(_SAMPLE, one.named, other.named))


def _character_test(item: tuple[Any, Any] | None, ignore_case: bool) -> _Chars | None:
    """Whether a character matches ``item``, when it is one character (a literal, a class, ``.``)."""
    if item is None:
        return None
    op, value = item
    if op == re_constants.LITERAL:
        test = re.compile(re.escape(chr(value)), re.IGNORECASE if ignore_case else 0)
    elif op == re_constants.NOT_LITERAL:
        test = re.compile(f"[^{re.escape(chr(value))}]", re.IGNORECASE if ignore_case else 0)
    elif op == re_constants.ANY:
        return _Chars(lambda char: True)
    elif op == re_constants.IN:
        return _class_test(value, ignore_case)
    else:
        return None
    return _Chars(lambda char: test.fullmatch(char) is not None, chr(value))


def _class_test(members: list[tuple[Any, Any]], ignore_case: bool) -> _Chars:
    parts, named = [], []
    for op, value in members:
        if op == re_constants.NEGATE:
            parts.append("^")
        elif op == re_constants.LITERAL:
            parts.append(re.escape(chr(value)))
            named.append(chr(value))
        elif op == re_constants.RANGE:
            parts.append(f"{re.escape(chr(value[0]))}-{re.escape(chr(value[1]))}")
            named.extend(map(chr, value))
        elif op == re_constants.CATEGORY and value in _CATEGORIES:
            parts.append(_CATEGORIES[value])
        else:  # something this check does not know: assume it matches every character
            return _Chars(lambda char: True)
    test = re.compile(f"[{''.join(parts)}]", re.IGNORECASE if ignore_case else 0)
    return _Chars(lambda char: test.fullmatch(char) is not None, "".join(named))


def _read_as(value: object, one: str = "value") -> str:
    """Why a value YAML did not read as text is refused (``5``, ``0755``, ``yes``, an empty item, ``[a]``,
    ``{a}``); ``one``: what a text there is (a list, ``cwd: [/srv/ops]``, was called "a number (['/srv/ops'])")."""
    if isinstance(value, list):
        return f"YAML reads this as a list ([{', '.join(map(str, value))[:80]}]), not as text: write one {one}"
    if isinstance(value, dict):
        return _unquoted_placeholder(value) or "YAML reads this as a mapping (key: value), not as text: put it in " \
            "quotes, as you mean it"
    kind = "nothing (null)" if value is None else f"true or false ({value})" if isinstance(value, bool) \
        else f"a number ({value})"
    return f"YAML reads this as {kind}, not as text: put it in quotes, as you mean it ('5', '0755', 'yes')"


def _unquoted_placeholder(value: object) -> str | None:
    """Why ``{service}`` written without quotes is refused: YAML reads it as a mapping (``{"service": None}``)."""
    if isinstance(value, dict) and len(value) == 1 and None in value.values():
        written = f"{{{next(iter(value))}}}"
        return f'YAML reads {written} without quotes as a mapping, not as text: put it in quotes, "{written}"'
    return None


def _as_list(command: str) -> str:
    try:
        return json.dumps(shlex.split(command), ensure_ascii=False)
    except ValueError:  # an unclosed quote
        return '["program", "argument", ...]'


_HOLDS_NUL = "holds a NUL character (\\0), which no command can be given: every run would fail; remove it"


class Argument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pattern: str = Field(description="Regular expression the whole value must match.")
    description: str = ""
    default: str | None = None

    @field_validator("description")
    @classmethod
    def _one_line(cls, value: str) -> str:
        """Chat shows it inside inline code (`service=<one of web, api>`), which a line break ends: YAML's folded
        text (``description: >``) ends in one."""
        return " ".join(value.split())

    @field_validator("default", mode="before")
    @classmethod
    def _default_is_text(cls, value: object) -> object:
        if value is not None and not isinstance(value, (str, list, dict)):
            raise ValueError(_read_as(value))
        if isinstance(value, str) and "\0" in value:
            raise ValueError(f"the default {_HOLDS_NUL}")
        if unquoted := _unquoted_placeholder(value):
            raise ValueError(unquoted)
        return value

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            slow = repeats_a_repetition(value)  # re's parser first: its words for what is wrong
            argument_pattern(value)
        # OverflowError: a count over 4,294,967,295 ("a{9999999999}")
        except (re.error, regex.error, OverflowError) as exc:
            raise ValueError(f"invalid regular expression: {exc}") from exc
        except RecursionError:  # a thousand groups one in another: a traceback, and no line named
            raise ValueError("invalid regular expression: its groups are nested too deeply to read") from None
        if slow:
            raise ValueError(f"the pattern {REPEATS_A_REPETITION}: on a long value that almost matches, checking it "
                             f"takes minutes, and Baton answers nobody meanwhile. {WRITE_IT_OTHERWISE}")
        return value

    @model_validator(mode="after")
    def _default_fits(self) -> Argument:
        try:
            fits = self.default is None or self.matches(self.default)
        except TimeoutError:
            raise PartError(f"checking the default '{self.default[:80]}' against the pattern was stopped after "
                            f"{MATCH_SECONDS:g} s: write the pattern so that it does not try many ways to match the "
                            "same characters", "default") from None
        if not fits:
            raise PartError(f"the default '{self.default[:80]}' does not match the pattern (the runbook could "
                            "never run without this argument)", "default")
        return self

    def matches(self, value: str) -> bool:
        """Whether the whole of ``value`` matches the pattern, as ``argument_pattern`` reads it. ``TimeoutError``
        when that takes more than ``MATCH_SECONDS``."""
        return argument_pattern(self.pattern).fullmatch(value, timeout=MATCH_SECONDS) is not None


def _matches_in_time(argument: Argument, value: str) -> bool | None:
    """``Argument.matches``, ``None`` when the matching was stopped (``MATCH_SECONDS``)."""
    try:
        return argument.matches(value)
    except TimeoutError:
        return None


@functools.lru_cache(maxsize=1024)
def argument_pattern(pattern: str) -> regex.Pattern[str]:
    """A runbook argument's pattern, compiled as Baton matches it: ``\\w \\d \\s \\b`` in their ASCII meanings
    (``re.ASCII``), as JSON Schema's (ECMA-262) ``\\w`` and ``\\d`` are. In Unicode's, ``^\\w+$`` took "wеb" with
    a Cyrillic "е" and ``^\\d+$`` took "٨٠" (Arabic-Indic digits): the approver read "web", the command got
    another word. Characters a pattern names itself (``[a-zé]``, ``\\u00e9``) are matched as written; ``(?i)``
    ignores the case of ASCII letters only (write ``[éÉ]``). A pattern that asks for Unicode's meanings
    (``(?u)``) has them.

    Matched with ``regex`` (its syntax is re's, its matching can be stopped: ``MATCH_SECONDS``); checked with
    ``re`` at load as well (``repeats_a_repetition``)."""
    try:
        # Cached here too: regex's own cache lookup took ~40 us of a request in a running Baton, this one ~3 us
        return regex.compile(pattern, regex.ASCII)
    except ValueError:  # "(?u)" at its start: the ASCII and UNICODE flags are incompatible
        return regex.compile(pattern)


_TIMEOUT_IS = "the timeout is a number of seconds"
_UNITS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "mins": 60, "minute": 60,
          "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600}


def _seconds(text: str) -> str:
    """``text`` when it is a number ('60', as YAML reads a quoted one); else why not, with the number meant
    for a duration written with its unit ('5m': 300)."""
    try:
        if float(text) == float(text):
            return text
    except ValueError:
        pass
    written = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]+)\s*", text.lower())
    if written and written[2] in _UNITS:
        raise ValueError(f"{_TIMEOUT_IS}: write {float(written[1]) * _UNITS[written[2]]:g}, not '{text[:40]}'")
    raise ValueError(f"{_TIMEOUT_IS} (at most 86400, a day), not '{text[:40]}'")


class Runbook(BaseModel):
    model_config = ConfigDict(extra="forbid")
    _approver_ids = field_validator("approvers", mode="before")(lambda cls, value: _ids_as_text(value))
    description: str
    command: list[str] = Field(min_length=1)
    args: dict[str, Argument] = Field(default_factory=dict)
    risk: Risk = "low"
    approvers: list[str] | None = None
    timeout: float = Field(60.0, gt=0, le=24 * 3600)
    example: str | None = None
    env: list[str] = Field(default_factory=list, description="Variables of Baton's environment the command gets "
                           "although Baton keeps them from commands (those of .env, a model's key): names only.")
    cwd: str | None = Field(None, description="The command's working directory (default: Baton's own).")

    @field_validator("command", mode="before")
    @classmethod
    def _list_of_texts(cls, value: object) -> object:
        if isinstance(value, str):
            raise ValueError(f"the command is a list of its arguments, never run through a shell: write it as "
                             f"{_as_list(value)}")
        if isinstance(value, list):
            for position, part in enumerate(value):
                if not isinstance(part, (str, list, dict)):
                    raise PartError(f"part {position}: {_read_as(part)}", str(position))
                if isinstance(part, str) and "\0" in part:  # every run failed: "embedded null byte"
                    raise PartError(f"part {position}: {_HOLDS_NUL}", str(position))
                if unquoted := _unquoted_placeholder(part):
                    raise PartError(f"part {position}: {unquoted}", str(position))
        return value

    @field_validator("timeout", mode="before")
    @classmethod
    def _seconds_not_yes(cls, value: object) -> object:
        if isinstance(value, bool):  # YAML's `true` would be 1 second
            raise ValueError("timeout is a number of seconds")
        if isinstance(value, str):
            return _seconds(value)
        if isinstance(value, float) and value != value:  # .nan: pydantic said "less than or equal to 86400"
            raise ValueError(f"{_TIMEOUT_IS} (at most 86400, a day), not nan")
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _variable_names(cls, value: object) -> object:
        """Names only, never a value: a value written here would sit in baton.yaml, and error messages never
        quote one (it is most likely a secret)."""
        names_only = "env lists variable names only: the values come from Baton's environment (.env or the shell)"
        if value is None:
            raise ValueError("env is empty: list the variables the command needs, as [NAME, ...], or remove it")
        if isinstance(value, dict):
            raise ValueError(f"{names_only}: write it as [{', '.join(str(name)[:40] for name in value)}]")
        if isinstance(value, str):
            names = [name for word in re.split(r"[\s,]+", value)
                     if re.fullmatch(VARIABLE_NAME_PATTERN, name := word.partition("=")[0])]  # a value: not quoted
            raise ValueError(f"env is a list of variable names: write it as [{', '.join(names) or 'NAME, ...'}]")
        if not isinstance(value, list):
            return value
        seen: set[str] = set()
        for position, name in enumerate(value):
            where = str(position)
            if isinstance(name, dict):  # "- OPENAI_API_KEY: sk-...", as docker-compose writes environment
                raise PartError(f"{names_only}: write just {', '.join(str(key)[:40] for key in name)}", where)
            if not isinstance(name, str):
                raise PartError(f"entry {position} is not a variable name ({_read_as(name)})", where)
            if "=" in name:  # the value is not quoted back: it is most likely a secret
                raise PartError(f"{names_only}: write just {name.partition('=')[0].strip()[:40] or 'the name'}", where)
            if not re.fullmatch(VARIABLE_NAME_PATTERN, name):  # not quoted either: a value pasted in place of a name
                raise PartError(f"entry {position} is not a variable name: a name has only letters, digits and _, "
                                "and does not begin with a digit", where)
            if name.upper() in SECRET_VARIABLES:
                raise PartError(f"{name} is Baton's own secret (a platform's token, its database's URL): Baton never "
                                "hands it to a command", where)
            if name in seen:
                raise PartError(f"{name} is listed twice", where)
            seen.add(name)
        return value

    @field_validator("cwd", mode="before")
    @classmethod
    def _existing_directory(cls, value: object) -> object:
        """Checked when baton.yaml is read: a directory that is not there failed every run of the runbook, with
        "No such file or directory" said of the program. A relative one is taken from Baton's working
        directory, as a relative program is; ``~`` is the home directory (no shell expands it)."""
        if value is None:  # `cwd:`, or `cwd: ~` for the home directory, which YAML reads as its null
            raise ValueError("cwd is empty (YAML reads a bare ~ as null, not as the home directory: write '~' in "
                             "quotes for that): name the command's working directory, or remove cwd for Baton's own")
        if not isinstance(value, str):
            raise ValueError(_read_as(value, "directory"))
        if not value.strip():
            raise ValueError("cwd is empty: name the command's working directory, or remove cwd for Baton's own")
        path = os.path.abspath(os.path.expanduser(value))
        relative = "" if os.path.isabs(os.path.expanduser(value)) else \
            f" (a relative path is taken from Baton's working directory, {os.getcwd()})"
        if not os.path.exists(path):
            raise ValueError(f"the directory {path} does not exist{relative}")
        if not os.path.isdir(path):
            raise ValueError(f"{path} is not a directory{relative}")
        if not os.access(path, os.X_OK):
            raise ValueError(f"Baton's user may not enter the directory {path} (its permissions)")
        return path

    @field_validator("args")
    @classmethod
    def _names_can_be_typed(cls, args: dict[str, Argument]) -> dict[str, Argument]:
        return _named_as(args, ARG_NAME_PATTERN, "argument name", " (it is typed as name=value)")

    @model_validator(mode="after")
    def _placeholders_are_declared(self) -> Runbook:
        if not self.command[0].strip():
            raise PartError("the command's first part, the program to run, is empty", "command", "0")
        program = self.command[0]
        if program != program.strip() or (" " in program and "/" not in program.split()[0] and "{" not in program):
            # ["df -h /"] or [" uptime"]: no program has that name; a path may hold a space ("/opt/My Tools/x")
            try:
                whole = json.dumps(shlex.split(program) + self.command[1:], ensure_ascii=False)
            except ValueError:  # an unclosed quote
                whole = '["program", "argument", ...]'
            raise PartError(f"the program to run is '{program[:80]}', spaces and all: each argument is a part of "
                            f"its own, without spaces around it ({whole})", "command", "0")
        hint = "(a brace of its own is written {{ or }})"
        for position, part in enumerate(self.command):
            where = ("command", str(position))
            try:
                fields = list(string.Formatter().parse(part))
            except ValueError as exc:
                raise PartError(f"command part '{part[:80]}': {exc} {hint}", *where) from None
            for _, field, spec, conversion in fields:
                if field is None:
                    continue
                if field not in self.args:
                    raise PartError(f"command uses {{{field}}} but no argument '{field}' is declared {hint}", *where)
                if spec or conversion:  # "{a!r}" quotes the value, "{a:{b}}" reads an undeclared b, "{a:d}" fails
                    raise PartError(f"command part '{part[:80]}': a placeholder is just {{{field}}}, without a "
                                    f"format or conversion {hint}", *where)
        return self

    def validate_args(self, given: dict[str, str]) -> dict[str, str]:
        """Return the full argument set, or raise ``ValueError`` naming every problem, fit for chat."""
        # quoted as what it is: a backtick of its own ended the code span, and a line break began a line of its own
        problems = [f"unknown argument `{quoted_as_is(name)}`" for name in sorted(set(given) - set(self.args))]
        values: dict[str, str] = {}
        for name, spec in self.args.items():
            value = given.get(name, spec.default)
            if value is None:
                problems.append(f"missing argument `{name}` ({spec.description or spec.pattern})")
            elif len(value) > MAX_VALUE_CHARS:  # checked first: on a long value even a fair pattern can take seconds
                problems.append(f"`{name}` is {len(value):,} characters long; an argument may have {MAX_VALUE_CHARS:,}")
            elif (fits := _matches_in_time(spec, value)) is None:
                problems.append(f"`{name}={quoted_as_is(value)}` could not be checked against the allowed pattern "
                                f"`{spec.pattern}` in time (stopped after {MATCH_SECONDS:g} s): ask whoever keeps "
                                "baton.yaml to write that pattern otherwise")
            elif not fits:
                allowed = f" ({spec.description})" if spec.description else ""
                problems.append(f"`{name}={quoted_as_is(value)}` does not match the allowed pattern `{spec.pattern}`"
                                f"{allowed}")
            else:
                values[name] = value
        if problems:
            raise ValueError("; ".join(problems))
        return values

    def example_problem(self, name: str) -> str:
        """Why ``example``, asked in chat as it is written, would be refused (its words read as chat reads them,
        ``bot.words``), or ``""``. Chat reads typographic quotes as the shell's when a request cannot be read
        otherwise (``bot.routing``), and so does this: `example: run deploy msg=“hello world”` was refused at
        load, though chat took it."""
        if self.example is None:
            return ""
        problem = self._request_problem(self.example, name)
        plain = self.example.translate(TYPOGRAPHIC_QUOTES)
        if problem and plain != self.example and not self._request_problem(plain, name):
            return ""
        return problem

    def _request_problem(self, request: str, name: str) -> str:
        """Why ``request``, read as its words are, would be refused as a request for runbook ``name``, or ``""``."""
        try:
            words = [word for word in split_words(request) if word.lower() != FORCE_WORD]
        except ValueError as exc:
            return f"it cannot be read ({exc})"
        if len(words) < 2 or words[0].lower() not in ("run", "runbook") or words[1].lower() != name:
            return f"it is not a request for this runbook: write it as `run {name} ...`"
        given: dict[str, str] = {}
        for word in words[2:]:
            key, sep, value = word.partition("=")
            if not sep or not key:
                return f"'{word[:80]}' is not a key=value argument"
            if key in given:  # chat refuses it; help showed it as how to ask
                return f"'{key[:80]}' is given twice"
            given[key] = value
        try:
            self.validate_args(given)
        except ValueError as exc:
            return str(exc)
        return ""

    def argv(self, values: dict[str, str]) -> list[str]:
        return [part.format(**values) for part in self.command]

    def unused_args(self) -> list[str]:
        """The declared arguments no part of the command uses: a value given for one is checked, then dropped."""
        used = {field for part in self.command for _, field, _, _ in string.Formatter().parse(part) if field}
        return [name for name in self.args if name not in used]

    def usage_args(self) -> str:
        """``key=<what>`` per argument; one with a default in brackets, since it may be left out."""
        return " ".join(f"[{self.placeholder(name)}]" if spec.default is not None else self.placeholder(name)
                        for name, spec in self.args.items())

    def placeholder(self, name: str) -> str:
        """``name=<what>`` as the usage line shows it, in `code`: a backtick of the description's own (``use `web```)
        ended the code span and showed the rest as Baton's words, so it is shown as ``quoted_code`` shows one."""
        described = self.args[name].description
        return f"{name}=<{quoted_code(described, len(described)) if described else name}>"


class GraphPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    _approver_ids = field_validator("approvers", mode="before")(lambda cls, value: _ids_as_text(value))
    approvers: list[str] | None = None
    risk: Risk = "high"


class Digest(BaseModel):
    """A scheduled digest: ``cron`` is a five-field crontab line read in ``timezone``."""

    model_config = ConfigDict(extra="forbid")
    platform: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    channel: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
    workspace: str = ""
    cron: str
    timezone: str = "UTC"
    graphs: list[str] = Field(default_factory=list)
    _written_timezone: str = PrivateAttr("")

    @field_validator("channel", "workspace", mode="before")
    @classmethod
    def _id_as_text(cls, value: object) -> object:
        """A Discord channel or server id written bare is a number to YAML, as an approver's is."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("channel", mode="before")
    @classmethod
    def _without_its_hash(cls, value: object) -> object:
        """A channel written as chat shows it, ``#ops``: bare, YAML read the # as a comment's (no channel at all, "Input
        should be a valid string"); quoted, it was told the pattern a channel must match."""
        if value is None:
            raise ValueError("the channel is empty: YAML reads a # after a space, and what follows it, as a comment: "
                             "write the channel without its # (on Slack and Discord, its id)")
        if isinstance(value, str) and value.startswith("#") and len(value) > 1:
            raise ValueError(f"write the channel without its #, as {value[1:81]} (on Slack and Discord, its id)")
        return value

    @model_validator(mode="after")
    def _valid_schedule(self) -> Digest:
        try:
            named = zone_name(self.timezone)
        except ScheduleError as exc:
            raise PartError(str(exc), "timezone") from None
        # Kept by its IANA name, as chat keeps one: `europe/paris` was shown so in `digest list` and on the cards
        self._written_timezone, self.timezone = self._written_timezone or self.timezone, named
        try:
            check_schedule(self.cron, self.timezone)
        except ScheduleError as exc:
            raise PartError(str(exc), "cron") from None
        return self

    @property
    def written_timezone(self) -> str:
        """The time zone as ``baton.yaml`` writes it: part of the schedule's key, which Batons before the zone was
        kept by its IANA name made from it (a key made from the name would start the schedule afresh)."""
        return self._written_timezone or self.timezone


class Price(BaseModel):
    """US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid")
    input: float = Field(ge=0, allow_inf_nan=False)
    output: float = Field(ge=0, allow_inf_nan=False)


class Models(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prices: dict[str, Price] = Field(default_factory=dict, description="keyed by the BATON_MODEL value")


Named = TypeVar("Named")


def _named_as(items: dict[str, Named], pattern: str, what: str, why: str = "") -> dict[str, Named]:
    """``items``, once every key matches ``pattern``."""
    for name in items:
        if not re.fullmatch(pattern, name):
            raise PartError(f"{what} '{name[:40]}' must match {pattern}{why}", name)
    return items


def _ids_as_text(value: object) -> object:
    """YAML reads a bare Discord id (123456789012345678) as a number; ids are text."""
    if isinstance(value, str):  # "approvers: alice, bob": pydantic said only "Input should be a valid list"
        names = [name for name in re.split(r"[\s,]+", value) if name]
        raise ValueError(f"approvers are a list of user ids: write it as [{', '.join(names)}]")
    if not isinstance(value, list):
        return value
    for position, item in enumerate(value):
        if isinstance(item, dict) and len(item) == 1:  # "- slack: U0123", a prefix written with a space after it
            platform, user = next(iter(item.items()))
            raise PartError(f"the approver '{str(platform)[:40]}: {str(user)[:80]}' is a mapping to YAML (a colon and "
                            f"a space): write {str(platform)[:40]}:{str(user)[:80]}, without the space", str(position))
    ids = [str(item) if isinstance(item, int) and not isinstance(item, bool) else item for item in value]
    for given in ids:  # nobody's id: such an approver could never approve, and a high-risk runbook none at all
        if isinstance(given, str) and not given.strip():
            raise ValueError("an approver is empty: remove it, or write the user id")
        if isinstance(given, str) and given != given.strip():
            raise ValueError(f"the approver '{given}' has spaces around it: write '{given.strip()}'")
        hidden = next((c for c in given if unicodedata.category(c) in ("Cf", "Cc")), None) \
            if isinstance(given, str) else None
        if hidden is not None:  # pasted from a document: it looks like the id, and never matches it
            shown = "".join(c for c in given if unicodedata.category(c) not in ("Cf", "Cc"))
            raise ValueError(f"the approver '{shown}' holds an invisible character (U+{ord(hidden):04X}): "
                             "write the id again by hand")
    return ids


class BatonConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approvers: list[str] = Field(default_factory=list)
    models: Models = Field(default_factory=Models)
    runbooks: dict[str, Runbook] = Field(default_factory=dict)
    graphs: dict[str, GraphPolicy] = Field(default_factory=dict)
    digests: list[Digest] = Field(default_factory=list)
    _approver_ids = field_validator("approvers", mode="before")(lambda cls, value: _ids_as_text(value))
    # What is likely a mistake but does not stop Baton ("file: line n: what"), as load_config found it.
    _warnings: list[str] = PrivateAttr(default_factory=list)
    _digest_lines: list[int] = PrivateAttr(default_factory=list)  # of each digest's platform, for what is checked later

    @property
    def warnings(self) -> list[str]:
        return self._warnings

    @field_validator("runbooks")
    @classmethod
    def _runbook_names(cls, value: dict[str, Runbook]) -> dict[str, Runbook]:
        if FORCE_WORD in value:  # bot.routing drops the word from a `run` request: `run force` asked for no runbook
            raise PartError(f"the runbook name '{FORCE_WORD}' is a word of Baton's own: in a request it means "
                            "\"run it even if it ran just now\", so `run force` could never ask for this runbook: "
                            "name it otherwise", FORCE_WORD)
        return _named_as(value, NAME_PATTERN, "runbook name")

    @model_validator(mode="after")
    def _high_risk_has_approvers(self) -> BatonConfig:
        for name, runbook in self.runbooks.items():
            if runbook.risk == "high" and not self.approvers_for_runbook(name) and self.approvers:
                raise PartError(f"runbook '{name}' is high risk, and its empty approvers list replaces the top-level "
                                f"one ({', '.join(self.approvers)[:200]}), so nobody could ever approve it: remove it "
                                "to use those, or name its own", "runbooks", name, "approvers")
            if runbook.risk == "high" and not self.approvers_for_runbook(name):
                raise PartError(f"runbook '{name}' is high risk but has no approvers, here or at the top: nobody "
                                "could ever approve it", "runbooks", name)
        return self

    @model_validator(mode="after")
    def _examples_would_be_taken(self) -> BatonConfig:
        for name, runbook in self.runbooks.items():
            problem = runbook.example_problem(name)
            if problem:  # help shows the example as how to ask, and "Did you mean" offers it
                raise PartError(f"runbook '{name}': its example `{runbook.example}` would be refused if asked: "
                                f"{problem}", "runbooks", name, "example")
        return self

    def approvers_for_runbook(self, name: str) -> list[str]:
        runbook = self.runbooks[name]
        return runbook.approvers if runbook.approvers is not None else self.approvers

    def policy_for_graph(self, graph: str) -> GraphPolicy:
        return self.graphs.get(graph) or GraphPolicy(approvers=None)

    def approvers_for_graph(self, graph: str) -> list[str]:
        policy = self.policy_for_graph(graph)
        return policy.approvers if policy.approvers is not None else self.approvers


MAX_PROBLEMS = 12  # named at once: the message fits a screen


def _empty(path: Path, allowed: bool) -> BatonConfig:
    if not allowed:
        raise ConfigError(f"{path}: holds no configuration (it is empty, or only comments): write {{}} "
                          "to mean no runbooks, approvers or digests")
    return BatonConfig()


def check_digest_platforms(config: BatonConfig, path: Path) -> None:
    """``ConfigError`` for a digest on a platform no installed adapter knows: it would never be posted, and
    is most likely a typo. Apart from ``load_config``: it asks what is installed, not what the file says."""
    adapters = {point.name: point for point in entry_points(group="baton.adapters")}
    problems = []
    for index, digest in enumerate(config.digests):
        line = config._digest_lines[index] if index < len(config._digest_lines) else None
        at = f"{path}: line {line}: digests.{index}" if line is not None else f"{path}: digests.{index}"
        if digest.platform not in adapters:  # the file BATON_CONFIG names, which need not be baton.yaml
            problems.append(f"{at}: platform: no adapter serves `{digest.platform}` (adapters: "
                            f"{', '.join(sorted(adapters))})")
            continue
        # A platform whose channels are known before it starts (the playground's): a digest for one it has not
        # was posted every day where nobody could read it.
        channels = getattr(adapters[digest.platform].load(), "known_channels", None)
        if channels is not None and digest.channel not in channels:
            problems.append(f"{at}: channel: `{digest.channel}` is no {digest.platform} channel (its channels: "
                            f"{', '.join(channels)})")
    if problems:
        raise ConfigError("\n".join(problems))


# Format characters a terminal shows as nothing or that reorder the line (U+202E, U+200B, U+2066), but a joiner after
# a character other than ASCII: it joins emoji (👩 U+200D 💻) and letters of some scripts.
_INVISIBLE = regex.compile(r"(?<![^\x00-\x7f])[\u200c\u200d]|(?![\u200c\u200d])\p{Cf}")


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` with its control characters as U+FFFD (line breaks too, unless ``lines``): a message that quotes
    the file (an escape sequence in a YAML double-quoted value) must not act on the terminal or journal showing it.
    Its invisible format characters too, bidi controls as chat shows them (``bot.messages.quoted``): U+202E turned
    the rest of a line of `baton threads` around, and "web\\u200b" read as "web"."""
    shown = "".join("\ufffd" if unicodedata.category(char) == "Cc" and not (lines and char == "\n") else char
                    for char in text)
    return _INVISIBLE.sub("\ufffd", shown) if not shown.isascii() else shown


def load_config_again(path: Path) -> BatonConfig:
    """``load_config`` for a Baton that runs with a configuration already (SIGHUP). Refused besides what
    ``load_config`` refuses: what is not a regular file (a pipe, as ``BATON_CONFIG=<(...)`` gives, was read at
    start and is empty now; a named pipe would keep the reading waiting for good), and a file that holds no
    configuration (empty: one written in place, read between its truncation and its writing), which would
    take every runbook, approver and digest away, as a file that is gone would."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):  # a directory: load_config says so
        raise ConfigError(f"{path}: not a regular file (a pipe or a device): it is read once, when Baton starts")
    return load_config(path, required=True, empty=False)


def load_config(path: Path, *, required: bool = False, empty: bool = True) -> BatonConfig:
    """Load and validate ``baton.yaml``. A missing file means an empty configuration, unless ``required``
    (its path was set explicitly: a typo there must not start a Baton with no runbooks and no approvers)."""
    if not path.exists():
        if required:
            raise ConfigError(f"{path}: no such file (BATON_CONFIG names it; unset it to start without runbooks)")
        return BatonConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is None:
            return _empty(path, empty)
        _check_size(path, root)  # before anything walks or loads the values the aliases stand for
        _refuse_repeated_keys(path, root)
        _join_surrogates(path, root)
        data = _Loader("").construct_document(root)  # which also puts the keys of each merge (<<) in `root`
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {_yaml_problem(text, exc)}") from exc
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read") from None
    if data is None:  # an empty document that says so ("---" and comments) is an empty file
        return _empty(path, empty)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: line {root.start_mark.line + 1}: the top level must be a mapping (approvers, "
                          "runbooks, graphs, digests, models)")
    try:
        config = BatonConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(str(part) for part in error["loc"])
            where = getattr(error.get("ctx", {}).get("error"), "where", ())  # a PartError's part
            line = _line_of(root, loc + where, key=error["type"] == "extra_forbidden")
            # Baton's own words, without pydantic's "Value error, " before them (the settings' refusals drop it too)
            said = validation_words(error)
            at = f"{'.'.join(loc)}: " if loc else ""  # a rule across the file says where itself ("runbook 'up' ...")
            problems.append(f"{path}: line {line}: {at}{said}{_meant(error, loc)}")
        if len(problems) > MAX_PROBLEMS:  # one mistake made in every runbook (desc: for description:) was 80 lines
            problems[MAX_PROBLEMS:] = [f"{path}: and {len(problems) - MAX_PROBLEMS} more problems"]
        raise ConfigError("\n".join(problems)) from exc
    config._digest_lines = [_line_of(root, ("digests", str(index), "platform")) for index in range(len(config.digests))]
    config._warnings = _warnings(config, path, root)
    for warning in config.warnings:
        logger.warning("%s", warning)
    return config


def _warnings(config: BatonConfig, path: Path, root: yaml.Node) -> list[str]:
    """What is likely a mistake, yet not refused: an argument the command never uses is asked for, checked
    against its pattern, then dropped (a command written as ["restart", "web"] with a ``service`` argument
    restarted web whatever service was asked for)."""
    return [f"{path}: line {_line_of(root, ('runbooks', name, 'args', arg), key=True)}: runbooks.{name}.args.{arg}: "
            f"the command never uses {{{arg}}}: a value given for it is checked, then not used (write \"{{{arg}}}\" "
            "in the command, or remove the argument; one kept only for the record, a ticket number, may stay)"
            for name, runbook in config.runbooks.items() for arg in runbook.unused_args()]


# A runbook's keys as other tools name them (docker-compose's environment and working_dir, systemd's WorkingDirectory).
_OTHER_NAMES = {"environment": "env", "workdir": "cwd", "working_dir": "cwd", "working_directory": "cwd",
                "workingdirectory": "cwd", "dir": "cwd", "directory": "cwd", "chdir": "cwd"}


def _meant(error: Any, loc: tuple[str, ...]) -> str:
    """For a key baton.yaml does not know, the one it likely is (``aprovers``: approvers)."""
    if error["type"] != "extra_forbidden" or not loc:
        return ""
    if loc[-1].lower() in _OTHER_NAMES and len(loc) == 3 and loc[0] == "runbooks":
        return f" (did you mean '{_OTHER_NAMES[loc[-1].lower()]}'?)"
    known = {name for model in (BatonConfig, Runbook, Argument, GraphPolicy, Digest, Models, Price)
             for name in model.model_fields}
    close = difflib.get_close_matches(loc[-1], sorted(known), n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _yaml_problem(text: str, exc: yaml.YAMLError) -> str:
    """Where and what PyYAML found wrong. It notices an unclosed quote or bracket, or a key without its ':'
    (``description x`` above ``command: [a]`` reads as one text), only on a later line: the line named is
    then the one where that began."""
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML refuses: it has a position, not a mark
        line = len((text[:exc.position] + "x").splitlines())
        return (f"line {line}: not valid YAML: the character U+{exc.character:04X} is not allowed (YAML refuses "
                "control characters)")
    problem, mark = getattr(exc, "problem", None) or exc, getattr(exc, "problem_mark", None)
    context, begin = getattr(exc, "context", None) or "", getattr(exc, "context_mark", None)
    if mark is None:
        return f"unknown line: not valid YAML: {problem}"
    if problem == "mapping values are not allowed here":
        context, begin = "while scanning a plain scalar", _last_scalar_start(text)
    if begin and begin.line < mark.line and context.startswith(("while scanning", "while parsing a flow")):
        return f"line {begin.line + 1}: not valid YAML: {context} that begins here, {problem} on line {mark.line + 1}"
    if begin and context and not context.startswith("while"):  # a second document, an anchor defined twice
        return f"line {mark.line + 1}: not valid YAML: {context} on line {begin.line + 1}, {problem} here"
    return f"line {mark.line + 1}: not valid YAML: {problem}"


def _last_scalar_start(text: str) -> yaml.Mark | None:
    """Where the text read just before a YAML error begins."""
    token = None
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            pass
    except yaml.YAMLError:
        pass
    return token.start_mark if isinstance(token, yaml.ScalarToken) else None


class _Loader(yaml.SafeLoader):
    """YAML's safe loading, naming the value it cannot make where it is written: a date that is none
    (``2024-02-30``, which YAML reads as a date) or a tag asking for what the value is not (``!!int x``) raised
    Python's own error, and Baton stopped with a traceback instead of the line."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(None, None, _unmade(node, exc), node.start_mark) from None


_KINDS = {"timestamp": "a date", "int": "a whole number", "float": "a number", "bool": "true or false",
          "binary": "base64 data"}


def _unmade(node: yaml.Node, exc: Exception) -> str:
    """Why the value of ``node`` cannot be made what its tag (written, or YAML's reading of it) says."""
    kind = node.tag.rpartition(":")[2]
    what = _KINDS.get(kind, f"!!{kind}")
    written = printable(str(node.value))[:40] if isinstance(node, yaml.ScalarNode) else "this value"
    why = f" ({exc})" if kind == "timestamp" and isinstance(exc, ValueError) and str(exc) else ""
    if isinstance(node, yaml.ScalarNode) and yaml.SafeLoader("").resolve(yaml.ScalarNode, node.value,
                                                                        (True, False)) == node.tag:
        return f"YAML reads '{written}' as {what}, and it is none{why}: put it in quotes if it is text"
    return f"its tag asks for {what}, and '{written}' is none{why}: remove the tag, or write {what}"


MAX_VALUES = 100_000  # what baton.yaml may expand to through aliases (a few hundred in practice)


def _check_size(config: Path, root: yaml.Node | None) -> None:
    """Refuse an alias that contains itself, and aliases that expand to more than ``MAX_VALUES`` values
    (nested aliases double at each level: a few lines can stand for billions of values)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise ConfigError(f"{config}: line {node.start_mark.line + 1}: an alias refers to the value it is in")
        open_nodes.add(id(node))
        children = [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        total = 1 + sum(size(child) for child in children)
        open_nodes.discard(id(node))
        if total > MAX_VALUES:
            raise ConfigError(f"{config}: line {node.start_mark.line + 1}: expands to more than {MAX_VALUES:,} "
                              "values through aliases")
        sizes[id(node)] = total
        return total

    if root is not None:
        size(root)


_SURROGATE = re.compile("[\ud800-\udfff]")
_LONE_SURROGATE = re.compile("[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]")


def _join_surrogates(config: Path, root: yaml.Node) -> None:
    """Read ``"\\ud83d\\ude00"`` as JSON does, one character (😀): PyYAML keeps two halves that are no text (no
    UTF-8), and a description or argument holding them failed wherever it went (pydantic's own error message, a
    command's arguments, a reply). Half of a character with no other half is refused, with its line."""
    seen: set[int] = set()
    nodes = [root]
    while nodes:
        node = nodes.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            nodes.extend(part for pair in node.value for part in pair)
        elif isinstance(node, yaml.SequenceNode):
            nodes.extend(node.value)
        elif isinstance(node.value, str) and _SURROGATE.search(node.value):
            if half := _LONE_SURROGATE.search(node.value):
                raise ConfigError(f"{config}: line {node.start_mark.line + 1}: \\u{ord(half[0]):04x} is half of a "
                                  "character (a UTF-16 surrogate) without its other half: write the character "
                                  "itself, or both halves")
            node.value = node.value.encode("utf-16", "surrogatepass").decode("utf-16")


def _key(node: yaml.Node) -> str:
    """A mapping key as loading reads it (``0x10`` is 16, ``on`` is True), written as validation errors
    write it (True as 1)."""
    if node.tag in ("tag:yaml.org,2002:str", "tag:yaml.org,2002:merge") or not isinstance(node, yaml.ScalarNode):
        return str(node.value)
    value = _Loader("").construct_object(node)
    return str(int(value) if isinstance(value, bool) else value)


def _refuse_repeated_keys(config: Path, node: yaml.Node, path: tuple[str, ...] = (),
                          seen: set[int] | None = None) -> None:
    """Refuse a key given twice in one mapping: YAML keeps the last, so a second ``uptime:`` runbook would
    silently replace the first (a value that aliases repeat is looked at once)."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            name, line = _key(key), key.start_mark.line + 1
            if name in first:
                raise ConfigError(f"{config}: line {line}: {'.'.join((*path, str(key.value)))} is given twice (first "
                                  f"on line {first[name]})")
            first[name] = line
            _refuse_repeated_keys(config, value, (*path, name), seen)
    elif isinstance(node, yaml.SequenceNode):
        for position, item in enumerate(node.value):
            _refuse_repeated_keys(config, item, (*path, str(position)), seen)


def _line_of(root: yaml.Node, loc: tuple[str, ...], *, key: bool = False) -> int:
    """The line of the value at ``loc`` (a validation error's path), or of as much of the path as the file
    has: a missing key is named on its mapping's line, a key of the wrong form on its own line. A mapping
    is named on its key's line, any other value where it begins (``command:`` with ``uptime`` on the
    line below: the line below); with ``key``, the key's line. A value an alias or a merge (``<<``)
    brings is named where it is written."""
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pairs = [pair for pair in node.value if _key(pair[0]) == part]
            if not pairs:
                return line
            key_node, node = pairs[-1]  # the last one counts (a key both merged in and given)
            line = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            return line
    return line if key or isinstance(node, yaml.MappingNode) else node.start_mark.line + 1
