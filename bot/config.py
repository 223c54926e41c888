"""``baton.yaml``: approvers, runbooks and per-graph policy, validated with line numbers.

A runbook's command is an argument list with ``{placeholders}``; it is never run through a shell,
and every placeholder must be a declared argument with a validation pattern.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot.schedules import check_schedule
from bot.messages import quoted

Risk = Literal["low", "high"]
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,40}$"
ARG_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,40}$"


class ConfigError(Exception):
    """``baton.yaml`` is wrong; the message names the file, line and what is wrong."""


class Argument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pattern: str = Field(description="Regular expression the whole value must match.")
    description: str = ""
    default: str | None = None

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _default_fits(self) -> Argument:
        if self.default is not None and not re.fullmatch(self.pattern, self.default):
            raise ValueError(f"the default '{self.default[:80]}' does not match the pattern (the runbook could "
                             "never run without this argument)")
        return self


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

    @field_validator("timeout", mode="before")
    @classmethod
    def _seconds_not_yes(cls, value: object) -> object:
        if isinstance(value, bool):  # YAML's `true` would be 1 second
            raise ValueError("timeout is a number of seconds")
        return value

    @field_validator("args")
    @classmethod
    def _names_can_be_typed(cls, args: dict[str, Argument]) -> dict[str, Argument]:
        return _named_as(args, ARG_NAME_PATTERN, "argument name", " (it is typed as name=value)")

    @model_validator(mode="after")
    def _placeholders_are_declared(self) -> Runbook:
        if not self.command[0].strip():
            raise ValueError("the command's first part, the program to run, is empty")
        hint = "(a brace of its own is written {{ or }})"
        for part in self.command:
            try:
                fields = list(string.Formatter().parse(part))
            except ValueError as exc:
                raise ValueError(f"command part '{part[:80]}': {exc} {hint}") from None
            for _, field, spec, conversion in fields:
                if field is None:
                    continue
                if field not in self.args:
                    raise ValueError(f"command uses {{{field}}} but no argument '{field}' is declared {hint}")
                if spec or conversion:  # "{a!r}" quotes the value, "{a:{b}}" reads an undeclared b, "{a:d}" fails
                    raise ValueError(f"command part '{part[:80]}': a placeholder is just {{{field}}}, without a "
                                     f"format or conversion {hint}")
        return self

    def validate_args(self, given: dict[str, str]) -> dict[str, str]:
        """Return the full argument set, or raise ``ValueError`` naming every problem, fit for chat."""
        problems = [f"unknown argument `{name}`" for name in sorted(set(given) - set(self.args))]
        values: dict[str, str] = {}
        for name, spec in self.args.items():
            value = given.get(name, spec.default)
            if value is None:
                problems.append(f"missing argument `{name}` ({spec.description or spec.pattern})")
            elif not re.fullmatch(spec.pattern, value):
                allowed = f" ({spec.description})" if spec.description else ""
                problems.append(f"`{name}={quoted(value)}` does not match the allowed pattern `{spec.pattern}`{allowed}")
            else:
                values[name] = value
        if problems:
            raise ValueError("; ".join(problems))
        return values

    def argv(self, values: dict[str, str]) -> list[str]:
        return [part.format(**values) for part in self.command]

    def usage_args(self) -> str:
        return " ".join(f"{name}=<{spec.description or name}>" for name, spec in self.args.items())


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

    @model_validator(mode="after")
    def _valid_schedule(self) -> Digest:
        check_schedule(self.cron, self.timezone)
        return self


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
            raise ValueError(f"{what} '{name[:40]}' must match {pattern}{why}")
    return items


def _ids_as_text(value: object) -> object:
    """YAML reads a bare Discord id (123456789012345678) as a number; ids are text."""
    return [str(item) if isinstance(item, int) and not isinstance(item, bool) else item for item in value] \
        if isinstance(value, list) else value


class BatonConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approvers: list[str] = Field(default_factory=list)
    models: Models = Field(default_factory=Models)
    runbooks: dict[str, Runbook] = Field(default_factory=dict)
    graphs: dict[str, GraphPolicy] = Field(default_factory=dict)
    digests: list[Digest] = Field(default_factory=list)
    _approver_ids = field_validator("approvers", mode="before")(lambda cls, value: _ids_as_text(value))

    @field_validator("runbooks")
    @classmethod
    def _runbook_names(cls, value: dict[str, Runbook]) -> dict[str, Runbook]:
        return _named_as(value, NAME_PATTERN, "runbook name")

    @model_validator(mode="after")
    def _high_risk_has_approvers(self) -> BatonConfig:
        for name, runbook in self.runbooks.items():
            if runbook.risk == "high" and not self.approvers_for_runbook(name):
                raise ValueError(f"runbook '{name}' is high risk but has no approvers, here or at the top: nobody "
                                 "could ever approve it")
        return self

    def approvers_for_runbook(self, name: str) -> list[str]:
        runbook = self.runbooks[name]
        return runbook.approvers if runbook.approvers is not None else self.approvers

    def policy_for_graph(self, graph: str) -> GraphPolicy:
        return self.graphs.get(graph) or GraphPolicy(approvers=None)

    def approvers_for_graph(self, graph: str) -> list[str]:
        policy = self.policy_for_graph(graph)
        return policy.approvers if policy.approvers is not None else self.approvers


def load_config(path: Path, *, required: bool = False) -> BatonConfig:
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
        _check_size(path, root)  # before anything walks or loads the values the aliases stand for
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "unknown line"
        raise ConfigError(f"{path}: {where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read") from None
    lines = _line_index(path, root)  # and a key given twice is refused here
    if data is None:
        return BatonConfig()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: line 1: the top level must be a mapping (approvers, runbooks, graphs)")
    try:
        return BatonConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(str(part) for part in error["loc"])
            line = _mentioned_line(_node_at(root, loc), error["msg"]) or _nearest_line(lines, loc)
            problems.append(f"{path}: line {line}: {'.'.join(loc) or '(top)'}: {error['msg']}")
        raise ConfigError("\n".join(problems)) from exc


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


def _line_index(config: Path, node: yaml.Node | None, prefix: tuple[str, ...] = (),
                seen: set[int] | None = None) -> dict[tuple[str, ...], int]:
    """Map each key path of the YAML document to its 1-based line number (a value that aliases repeat
    under its first path only).

    A key given twice in one mapping is refused: YAML keeps the last, so a second ``uptime:``
    runbook would silently replace the first.
    """
    index: dict[tuple[str, ...], int] = {}
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:
        return index
    seen.add(id(node))
    index[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            key_path = (*prefix, str(key.value))
            if key_path in index:
                raise ConfigError(f"{config}: line {key.start_mark.line + 1}: {'.'.join(key_path)} is given "
                                  f"twice (first on line {index[key_path]})")
            index.update(_line_index(config, value, key_path, seen))
            index[key_path] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for position, item in enumerate(node.value):
            index.update(_line_index(config, item, (*prefix, str(position)), seen))
    return index


_QUOTED = re.compile(r"'([^']+)'|`([^`]+)`|(\{[^}]+\})")


def _node_at(node: yaml.Node | None, loc: tuple[str, ...]) -> yaml.Node | None:
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((value for key, value in node.value if str(key.value) == part), None)
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
        else:
            return None
    return node


def _mentioned_line(node: yaml.Node | None, message: str) -> int | None:
    """The line, inside ``node``, of the key or value the message quotes: a whole-object check (a
    runbook's command, a digest's schedule) is reported on its object, but the wrong part is deeper."""
    tokens = [next(group for group in match.groups() if group) for match in _QUOTED.finditer(message)]
    if node is None or not tokens:
        return None
    pending, seen = [node], set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, yaml.ScalarNode):
            text = str(current.value)
            if any(token == text or (token.startswith("{") and token in text) for token in tokens):
                return int(current.start_mark.line) + 1
        elif isinstance(current, yaml.MappingNode):
            pending[:0] = [part for pair in current.value for part in pair]
        elif isinstance(current, yaml.SequenceNode):
            pending[:0] = list(current.value)
    return None


def _nearest_line(lines: dict[tuple[str, ...], int], loc: tuple[str, ...]) -> int:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


