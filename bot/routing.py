"""Turns request text into a route: explicit command, then graph patterns, else the help answer."""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass, field
from typing import Any

from bot.config import BatonConfig
from bot.kit import Request
from bot.messages import quoted
from bot.registry import GraphRegistry

FORCE_WORD = "force"
RUNBOOK_GRAPH = "runbook"
HELP_GRAPH = "help"
DIGEST_COMMAND = "digest"  # schedules and "digest now": handled by the core (bot.digests), not a graph run


class RouteError(ValueError):
    """The request cannot be routed; the message is shown to the user as is."""


@dataclass(frozen=True)
class Route:
    graph: str
    input: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    force: bool = False
    title: str = ""
    unmatched: bool = False  # nothing matched: the help answer, unless a model can route it


def route(request: Request, text: str, registry: GraphRegistry, config: BatonConfig) -> Route:
    """``text`` is the request without the bot mention. Raises ``RouteError`` for bad requests."""
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        if text.split()[:1] in (["run"], [RUNBOOK_GRAPH], [DIGEST_COMMAND]):
            raise RouteError(f"I could not read that request ({exc}). Check the quotes.") from None
        tokens = text.split()  # plain words ("what's up?") need no shell-style quoting
    force = FORCE_WORD in tokens
    tokens = [token for token in tokens if token != FORCE_WORD]
    if not tokens:
        return Route(HELP_GRAPH, _input_for(registry, HELP_GRAPH, request, ""), title="help")
    head, rest = tokens[0].lower(), tokens[1:]
    if head in ("run", RUNBOOK_GRAPH):
        return _runbook_route(rest, config, force)
    if head == DIGEST_COMMAND:
        return Route(DIGEST_COMMAND, {"words": rest}, title="digest")
    spec = registry.get(head)
    if spec is not None and head != RUNBOOK_GRAPH:
        args = " ".join(rest)
        return Route(
            head,
            spec.make_input(request, args),
            fingerprint=_fingerprint(head, args) if spec.dedupe else None,
            force=force,
            title=" ".join([head, *rest])[:120],
        )
    plain = " ".join(tokens)
    for spec in registry:
        if any(pattern.search(plain) for pattern in spec.patterns):
            return Route(
                spec.name,
                spec.make_input(request, plain),
                fingerprint=_fingerprint(spec.name, plain) if spec.dedupe else None,
                force=force,
                title=plain[:120],
            )
    return Route(HELP_GRAPH, _input_for(registry, HELP_GRAPH, request, plain), title="help", unmatched=True)


def route_to(registry: GraphRegistry, graph: str, request: Request, text: str) -> Route:
    """The route to ``graph`` with the whole request as its text (model routing, choice cards)."""
    spec = registry.get(graph)
    if spec is None:
        raise RouteError(f"The `{graph}` graph is not installed.")
    return Route(graph, spec.make_input(request, text), fingerprint=_fingerprint(graph, text) if spec.dedupe else None,
                 title=text[:120])


def _runbook_route(tokens: list[str], config: BatonConfig, force: bool) -> Route:
    known = ", ".join(f"`{name}`" for name in config.runbooks) or "none are configured"
    if not tokens:
        raise RouteError(f"Which runbook? Use `run <runbook> key=value ...`. Runbooks: {known}.")
    name, pairs = tokens[0].lower(), tokens[1:]  # runbook names are lower case, as `RUN` is `run`
    runbook = config.runbooks.get(name)
    if runbook is None:
        raise RouteError(f"I don't know a runbook called `{quoted(name)}`. Runbooks: {known}.")
    given: dict[str, str] = {}
    problems: list[str] = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            problems.append(f"`{quoted(pair)}` is not a `key=value` argument")
        elif key in given:
            problems.append(f"`{quoted(key)}` is given twice")
        else:
            given[key] = value
    values: dict[str, str] = {}
    try:
        values = runbook.validate_args(given)
    except ValueError as exc:
        problems.insert(0, str(exc))  # the values first: `service=web;rm -rf /` is wrong in more than one way
    if problems:
        usage = f"`run {name} {runbook.usage_args()}`" if runbook.args else f"`run {name}` (no arguments)"
        raise RouteError(f"Runbook `{name}`: {'; '.join(problems)}. Usage: {usage}. Nothing was run.")
    canonical = " ".join(f"{key}={values[key]}" for key in sorted(values))
    return Route(
        RUNBOOK_GRAPH,
        {"runbook": name, "args": values},
        fingerprint=_fingerprint(f"runbook:{name}", canonical),
        force=force,
        title=f"run {name} {canonical}".strip(),
    )


def _input_for(registry: GraphRegistry, graph: str, request: Request, args: str) -> dict[str, Any]:
    spec = registry.get(graph)
    return spec.make_input(request, args) if spec else {"text": args}


def _fingerprint(graph: str, args: str) -> str:
    normalised = " ".join(args.lower().split())
    return hashlib.sha256(f"{graph}\x00{normalised}".encode()).hexdigest()[:32]
