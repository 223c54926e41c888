"""Turns request text into a route: explicit command, then graph patterns, else the help answer."""

from __future__ import annotations

import difflib
import hashlib
import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from bot.config import FORCE_WORD, BatonConfig
from bot.kit import Request
from bot.lookalikes import quoted_as_is
from bot.messages import quoted_code
from bot.registry import GraphRegistry, GraphSpec
from bot.words import TYPOGRAPHIC, TYPOGRAPHIC_QUOTES, split_words

RUNBOOK_GRAPH = "runbook"
HELP_GRAPH = "help"
DIGEST_COMMAND = "digest"  # schedules and "digest now": handled by the core (bot.digests), not a graph run
CANCEL_COMMAND = "cancel"  # stops the thread's run: handled by the core, which holds the run, not a graph
# The word people reach for first. Unlike ``cancel`` it is one only as the whole message ("stop web-2" may be a
# graph's pattern, "stop the nginx service" a model's to route), and a graph may be named so (then it is its own).
STOP_WORD = "stop"
# Pseudo-graphs of the core's own runs, no request's: a model's routing that started nothing (chatter; its run
# keeps what it cost), and a choice card waiting for the requester to pick a graph (the pick is a run of its own).
ROUTER = "route"
CHOOSER = "choose"
COMMAND_WORDS = ("run", RUNBOOK_GRAPH, DIGEST_COMMAND)  # read shell-style, whatever graphs are installed
# Answered beside a thread's run (``aside``): graphs that only read, and the decisions a card's buttons make.
ASIDE_GRAPHS = (HELP_GRAPH, "status")
DECISION_WORDS = ("approve", "reject")
NAME_PUNCTUATION = "!.?"  # after a graph's or a command's name written alone: `help?` is `help`


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


def route(request: Request, text: str, registry: GraphRegistry, config: BatonConfig, *, addressed: bool = True) -> Route:
    """``text`` is the request without the bot mention. Raises ``RouteError`` for bad requests.

    ``addressed=False``: written in a Baton thread without mentioning the bot. A graph's name then is a request
    only as the whole message (``status``), as ``cancel`` is: "status of web-2 is fine now" and "help me check
    the logs, carol?" are people talking to each other (unmatched, as any other talk). ``run ...`` and
    ``digest ...`` are requests either way.

    Only ``run`` and ``digest`` read their words shell-style (quotes group, ``force`` anywhere in a
    run); every other graph gets the rest of the request as it was written, quotes, backslashes and
    all, and ``force`` counts only as its first or last word, and only for a graph that answers
    repeated requests with a link (the word means nothing to the others).
    """
    force, text = _leading_force(text)
    head, rest = _first_word(text)
    if not head:
        return Route(HELP_GRAPH, _input_for(registry, HELP_GRAPH, request, ""), title="help", force=force)
    command = head.lower()
    if _cancel_word(command, rest, registry):
        return Route(CANCEL_COMMAND, title=CANCEL_COMMAND)
    command = _name_written(command, rest, registry)
    if command in COMMAND_WORDS:
        if command == DIGEST_COMMAND:
            # No digest word holds a typographic quote: `cron “0 9 * * 1-5” UTC` (typed on a phone) is the cron
            # line in quotes, not five words with quote marks in two of them.
            return Route(DIGEST_COMMAND, {"words": _shell_words(rest.translate(TYPOGRAPHIC_QUOTES))}, title="digest")
        try:
            return _run_route(rest, config, force)
        except RouteError as error:
            plain = rest.translate(TYPOGRAPHIC_QUOTES)
            if plain == rest:
                raise
            try:  # a phone's keyboard types `msg="hello world"` as `msg=“hello world”`: read as it was meant
                return _run_route(plain, config, force)
            except RouteError:
                raise error from None
    spec = registry.get(command)
    if spec is not None and not addressed and not _names_only(spec, rest):
        spec = None  # "status of web-2 is fine now": people talking, unless a graph's pattern says otherwise
    if command == HELP_GRAPH:  # "help me", "help runbooks": the whole help, not "I don't know how to handle"
        rest = ""
    if spec is not None:
        if spec.dedupe:
            force, rest = _trailing_force(rest, force)
        return Route(
            command,
            spec.make_input(request, rest),
            fingerprint=_fingerprint(command, rest) if spec.dedupe else None,
            force=force,
            title=f"{command} {rest}".strip()[:120],
        )
    for spec in registry:
        if spec.matches(text):
            asked = text
            if spec.dedupe:
                force, asked = _trailing_force(text, force)
            return Route(
                spec.name,
                spec.make_input(request, asked),
                fingerprint=_fingerprint(spec.name, asked) if spec.dedupe else None,
                force=force,
                title=asked[:120],
            )
    # Titled by its words: `baton threads` and `status` listed carol's "hello there" as "help", not to be found.
    return Route(HELP_GRAPH, _input_for(registry, HELP_GRAPH, request, text), title=text[:120] or "help",
                 unmatched=True)


def is_request(text: str, registry: GraphRegistry, *, addressed: bool = True) -> bool:
    """Whether ``route`` would take ``text`` for a request (a command, a graph's name or pattern) rather than
    leave it unmatched, without building its input: no graph author's code runs (``make_input``).
    ``addressed``: as ``route`` reads it (``False`` for a message in a Baton thread that does not mention the bot)."""
    _force, text = _leading_force(text)
    head, rest = _first_word(text)
    command = head.lower()
    if _cancel_word(command, rest, registry):
        return not rest.strip()  # unmentioned, as ``is_cancel`` reads it: the word alone
    command = _name_written(command, rest, registry)
    if not command or command in COMMAND_WORDS:
        return True
    spec = registry.get(command)
    if spec is not None and (addressed or _names_only(spec, rest)):
        return True
    return any(spec.matches(text) for spec in registry)


def _name_written(word: str, rest: str, registry: GraphRegistry) -> str:
    """``word`` (lower case), the first of a request, as the graph or command it names: written alone with ``?``,
    ``!`` or ``.`` after it (``help?``, ``Status!``), the name without them, as ``cancel!`` is ``cancel``. "help?"
    was answered "I don't know how to handle `help?` yet", and "status?" waited behind a card it was asked beside."""
    bare = word.rstrip(NAME_PUNCTUATION)
    if rest.strip() or bare == word or registry.get(word) is not None:
        return word
    return bare if bare in COMMAND_WORDS or registry.get(bare) is not None else word


def _names_only(spec: GraphSpec, rest: str) -> bool:
    """Whether the words after a graph's name add nothing to it (none, or a repeated request's ``force``)."""
    rest = rest.strip()
    return not rest or (spec.dedupe and rest.lower() == FORCE_WORD)


def is_cancel(text: str, addressed: bool, registry: GraphRegistry | None = None) -> bool:
    """Whether ``text`` (without the bot mention) asks to stop the thread's run: ``cancel``, and whatever follows
    when the bot was mentioned; unmentioned, the word alone ("cancel the meeting" is people talking). ``stop``
    alone too, unless ``registry`` has a graph of that name."""
    head, rest = _first_word(_leading_force(text)[1])
    return _cancel_word(head, rest, registry) and (addressed or not rest.strip())


def aside(text: str, registry: GraphRegistry, *, addressed: bool) -> str | None:
    """What ``text`` (without the bot mention) asks of a thread busy with a run, when it is answered beside that
    run rather than after it: ``status`` or ``help`` as ``route`` reads them (they only read), or ``approve`` /
    ``reject`` typed instead of clicked (answered with where decisions are made; unmentioned, the word alone, as
    ``is_cancel``). ``None`` for anything else, which waits its turn. A graph of a decision's name is a request, as
    is a decision with words a graph's pattern takes, as ``route`` reads them first."""
    text = _leading_force(text)[1]
    head, rest = _first_word(text)
    word = head.lower()
    decision = word.rstrip("!.?")
    if decision in DECISION_WORDS and registry.get(decision) is None:
        if rest.strip() and any(spec.matches(text) for spec in registry):  # "approve pr 42": a graph's pattern's
            return None
        return decision if addressed or not rest.strip() else None
    word = _name_written(word, rest, registry)
    spec = registry.get(word) if word in ASIDE_GRAPHS else None
    if spec is None or spec.asks_approval or not (addressed or _names_only(spec, rest)):
        return None
    return word


def cancel_word(text: str) -> str:
    """The word a cancel's ``text`` was written with, for its answers to name: ``stop`` or ``cancel`` ("@baton stop"
    with nothing running was told that "`cancel` stops a run ...")."""
    head, _rest = _first_word(_leading_force(text)[1])
    return STOP_WORD if head.lower().rstrip("!.") == STOP_WORD else CANCEL_COMMAND


def _cancel_word(word: str, rest: str, registry: GraphRegistry | None) -> bool:
    """Whether ``word`` followed by ``rest`` is a cancel: ``cancel``, written in a hurry or not (``Cancel!``,
    ``cancel.``): "cancel!" was queued behind the run it was meant to stop, and then answered "I don't know how to
    handle `cancel!`". ``stop`` too, alone, as people write it first ("@baton stop" was queued behind the run it
    meant to stop), unless a graph is named so (``STOP_WORD``)."""
    word = word.lower().rstrip("!.")
    if word == CANCEL_COMMAND:
        return True
    return word == STOP_WORD and not rest.strip() and (registry is None or registry.get(STOP_WORD) is None)


def runbook_named(text: str) -> str | None:
    """The runbook a ``run <runbook> ...`` request names, as ``route`` reads it; ``None`` for any other text.

    Read as ``route`` reads it, its words after the command's, and with typographic quotes as quotes when that is
    how ``route`` took it (no runbook's name holds one): `run “restart” service=“web”` ran `restart` and was said to
    name `“restart”`, and `run\u2028restart` was no ``run`` at all; who may cancel it was then the approvers of any
    runbook, not `restart`'s own."""
    head, rest = _first_word(_leading_force(text)[1])
    if head.lower() not in ("run", RUNBOOK_GRAPH):
        return None
    for reading in (rest, rest.translate(TYPOGRAPHIC_QUOTES)):
        try:
            words = [word for word in split_words(reading) if word.lower() != FORCE_WORD]
        except ValueError:
            continue
        if words and (reading is not rest or not set(words[0]) & set(TYPOGRAPHIC)):
            return words[0].lower()
    return None


def _first_word(text: str) -> tuple[str, str]:
    """The first word and the rest as written (inner spacing and line breaks kept)."""
    parts = text.strip().split(maxsplit=1)
    return (parts[0], parts[1] if len(parts) > 1 else "") if parts else ("", "")


def _leading_force(text: str) -> tuple[bool, str]:
    head, rest = _first_word(text)
    return (True, rest) if head.lower() == FORCE_WORD else (False, text.strip())


def _trailing_force(text: str, force: bool) -> tuple[bool, str]:
    words = text.rsplit(maxsplit=1)
    if words and words[-1].lower() == FORCE_WORD:
        return True, words[0] if len(words) > 1 else ""
    return force, text


def route_to(registry: GraphRegistry, graph: str, request: Request, text: str) -> Route:
    """The route to ``graph`` with the whole request as its text (model routing, choice cards), but for the ``force``
    of a graph that answers repeated requests with a link."""
    spec = registry.get(graph)
    if spec is None:
        raise RouteError(f"The `{graph}` graph is not installed.")
    if graph == HELP_GRAPH:  # help was chosen for it ("what can you do?"): the whole help, not "I don't know how"
        return Route(graph, spec.make_input(request, ""), title=text[:120] or "help")
    force, asked = False, text
    if spec.dedupe:  # its `force`, first or last word, as ``route`` reads it: "Lunch is served force" was announced
        leading, asked = _leading_force(text)  # with the word, and a second one linked to the first, not run
        force, asked = _trailing_force(asked, leading)
    return Route(graph, spec.make_input(request, asked), fingerprint=_fingerprint(graph, asked) if spec.dedupe else None,
                 force=force, title=asked[:120])


def _shell_words(text: str) -> list[str]:
    try:
        return split_words(text)
    except ValueError as exc:
        raise RouteError(f"I could not read that request ({exc}). Check the quotes.") from None


def _run_route(text: str, config: BatonConfig, force: bool) -> Route:
    words = _shell_words(text)
    tokens = [word for word in words if word.lower() != FORCE_WORD]  # `Force`, as baton.yaml's examples read it
    try:
        return _runbook_route(tokens, config, force or len(tokens) < len(words))
    except RouteError:
        pasted = _placeholders_pasted(text, tokens, config)
        if pasted is None:
            raise
        raise RouteError(pasted) from None


def _placeholders_pasted(text: str, words: list[str], config: BatonConfig) -> str | None:
    """What to say to a usage line pasted back as it was shown (``run restart service=<one of web, api, worker>``,
    ``run echo msg=<the message> [loud=<shout it>]``), which was refused word by word ("`of` is not a `key=value`
    argument", "unknown argument `[loud`", ...)."""
    runbook = config.runbooks.get(words[0].lower()) if words else None
    if runbook is None:
        return None
    shown = [runbook.placeholder(name) for name in runbook.args]
    left = [placeholder for placeholder in shown if placeholder in text]
    if not left:
        return None
    optional = " Leave out an argument in [brackets], or give it without them." if "[" in text else ""
    name = words[0].lower()
    return (f"Runbook `{name}`: `{quoted_code(left[0].partition('=')[2], 120)}` stands for a value: write the value "
            f"itself in its place, without the angle brackets.{optional} Usage: `run {name} {runbook.usage_args()}`. "
            "Nothing was run.")


def _runbook_route(tokens: list[str], config: BatonConfig, force: bool) -> Route:
    known = ", ".join(f"`{name}`" for name in config.runbooks) or "none are configured"
    if not tokens or (tokens[0].lower() in HELP_WORDS and tokens[0].lower() not in config.runbooks):
        raise RouteError(_runbook_usages(config))  # "run", "run help": which runbooks, and how each is asked
    name, pairs = tokens[0].lower(), tokens[1:]  # runbook names are lower case, as `RUN` is `run`
    runbook = config.runbooks.get(name)
    if runbook is None:
        guess = _closest(name, list(config.runbooks))
        hint = f" Did you mean `{guess}`?" if guess else ""
        # As what it is: "I don't know a runbook called `uptime`. Did you mean `uptime`?" of "uptime\u200b"
        raise RouteError(f"I don't know a runbook called `{quoted_as_is(name)}`.{hint} Runbooks: {known}.")
    given: dict[str, str] = {}
    problems: list[str] = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            problems.append(f"`{quoted_as_is(pair)}` is not a `key=value` argument")
        elif key in given:
            problems.append(f"`{quoted_as_is(key)}` is given twice")
        else:
            given[key] = value
    # A log pasted after `run uptime` made one problem a word: a 4,000-character request was answered with 20,000.
    problems = list(dict.fromkeys(problems))
    unknown = [key for key in given if key not in runbook.args]  # the first ones written are named
    untold = len(problems) - PROBLEMS_SHOWN
    problems = problems[:PROBLEMS_SHOWN] + ([f"{untold:,} more words that are not `key=value` arguments (or are "
                                             "given twice)"] if untold > 0 else [])
    checked = {key: value for key, value in given.items() if key in runbook.args or key in unknown[:PROBLEMS_SHOWN]}
    values: dict[str, str] = {}
    try:
        values = runbook.validate_args(checked)
    except ValueError as exc:
        problems.insert(0, str(exc))  # the values first: `service=web;rm -rf /` is wrong in more than one way
    if len(unknown) > PROBLEMS_SHOWN:
        problems.insert(1, f"{len(unknown) - PROBLEMS_SHOWN:,} more unknown arguments")
    guesses = {key: _closest(key, [arg for arg in runbook.args if arg not in given])
               for key in unknown[:PROBLEMS_SHOWN]}  # `Service=web`, `sevice=web`: said only "unknown argument"
    hint = " ".join(f"Did you mean `{guess}=` for `{quoted_as_is(key)}=`?" for key, guess in guesses.items() if guess)
    mended = _mended(pairs, runbook) if problems else None
    meant = shlex.join(["run", name, *mended]) if mended is not None else ""
    # Offered to be copied back: only when shown whole and as written (code cut at 300 characters, or with a line
    # break shown as a space, was another request, or one that could not be read)
    if meant and quoted_code(meant, SUGGESTION_CHARS) == meant:  # `service = web`, `--service web`, `service:web`
        hint = f"Did you mean `{meant}`?"
    if problems:
        usage = f"`run {name} {runbook.usage_args()}`" if runbook.args else f"`run {name}` (no arguments)"
        raise RouteError(f"Runbook `{name}`: {'; '.join(problems)}.{' ' + hint if hint else ''} Usage: {usage}. "
                         "Nothing was run.")
    canonical = " ".join(f"{key}={values[key]}" for key in sorted(values))
    return Route(
        RUNBOOK_GRAPH,
        {"runbook": name, "args": values},
        fingerprint=_exact_fingerprint(f"runbook:{name}", values),
        force=force,
        title=f"run {name} {canonical}".strip(),
    )


SUGGESTION_CHARS = 300  # of a "Did you mean" request, which is offered whole or not at all
PROBLEMS_SHOWN = 5  # of each kind (words that are no argument, unknown arguments) in one reply; the rest counted
HELP_WORDS = ("help", "?", "list")  # after `run`: the runbooks, unless one has that name
USAGES_SHOWN = 30  # runbooks listed with their usage in one reply; the rest by name


def _runbook_usages(config: BatonConfig) -> str:
    """The runbooks, each with how it is asked for: what `run` alone (or `run help`) answers."""
    if not config.runbooks:
        return "There are no runbooks: none are configured in baton.yaml."
    lines = []
    for name, runbook in list(config.runbooks.items())[:USAGES_SHOWN]:
        usage = f"run {name} {runbook.usage_args()}".strip()
        risk = " (needs approval)" if runbook.risk == "high" else ""
        described = " ".join(runbook.description.split())
        lines.append(f"• `{usage}`" + (f" — {described}" if described else "") + risk)
    rest = list(config.runbooks)[USAGES_SHOWN:]
    if rest:
        lines.append(f"…and {len(rest)} more: " + ", ".join(f"`{name}`" for name in rest))
    return "Which runbook? Use `run <runbook> key=value ...`:\n" + "\n".join(lines)


def _mended(words: list[str], runbook: Any) -> list[str] | None:
    """``words`` as the ``key=value`` arguments they were meant as (``service = web``, ``service= web``,
    ``--service web``, ``--service=web``, ``service:web``), if reading them so makes a valid request; else ``None``."""
    mended: list[str] = []
    at = 0
    while at < len(words):
        word, after = words[at], words[at + 1:]
        key = word.lstrip("-")
        if word.startswith("-") and "=" in key:  # --service=web
            mended.append(key)
        elif after and after[0] == "=" and len(after) > 1:  # service = web
            mended.append(f"{word}={after[1]}")
            at += 2
        elif after and after[0].startswith("=") and "=" not in word:  # service =web
            mended.append(word + after[0])
            at += 1
        elif word.endswith("=") and word.count("=") == 1 and after and "=" not in after[0]:  # service= web
            mended.append(word + after[0])
            at += 1
        elif word.startswith("-") and key in runbook.args and after and "=" not in after[0]:  # --service web
            mended.append(f"{key}={after[0]}")
            at += 1
        elif word in runbook.args and after and "=" not in after[0] and after[0] not in runbook.args:  # service web
            mended.append(f"{word}={after[0]}")
            at += 1
        elif "=" not in word and word.partition(":")[0] in runbook.args:  # service:web
            mended.append(word.replace(":", "=", 1))
        else:
            mended.append(word)
        at += 1
    given = dict(word.partition("=")[::2] for word in mended)
    if mended == words or len(given) != len(mended) or not all("=" in word for word in mended):
        return None
    try:
        runbook.validate_args(given)
    except ValueError:
        return None
    return mended


def _closest(word: str, names: list[str]) -> str | None:
    """The name ``word`` was most likely meant to be (a typo, another case), if one is close enough."""
    same = [name for name in names if name.lower() == word.lower()]
    if same:
        return same[0]
    close = difflib.get_close_matches(word.lower(), names, n=1, cutoff=0.75)
    return close[0] if close else None


def _input_for(registry: GraphRegistry, graph: str, request: Request, args: str) -> dict[str, Any]:
    spec = registry.get(graph)
    return spec.make_input(request, args) if spec else {"text": args}


def _exact_fingerprint(graph: str, values: dict[str, str]) -> str:
    """A runbook's arguments are exact values (``word=Main`` is not ``word=main``, ``a="x b=y"`` not
    ``a=x b=y``): the fingerprint is of the values as they are, not of text written out of them."""
    exact = json.dumps(values, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(f"{graph}\x00{exact}".encode()).hexdigest()[:32]


def _fingerprint(graph: str, args: str) -> str:
    normalised = " ".join(args.lower().split())
    return hashlib.sha256(f"{graph}\x00{normalised}".encode()).hexdigest()[:32]
