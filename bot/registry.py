"""Finds the graphs in ``graphs/``: every module that defines ``graph`` is one.

A graph module may also define ``DESCRIPTION``, ``EXAMPLE``, ``PATTERNS`` (regular expressions that
route plain chat to it), ``DEDUPE`` (default true: the same request in a channel links to the
running thread instead of running twice), ``ASKS_APPROVAL`` (default false: whether it stops for
a human's decision; help marks it), ``TIMEOUT`` (seconds a run may go on between its start or a
resume and its end or next question; ``None``: no limit; unset: ``BATON_RUN_TIMEOUT_SECONDS``) and
``make_input(request, args)`` (default ``{"text": args}``). ``graph`` may be a ``StateGraph`` builder or a compiled graph; Baton
compiles or copies it with its own checkpointer.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import logging
import math
import pkgutil
import re
import threading
import traceback
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, TypeVar

import regex
from langchain_core.runnables.config import run_in_executor
from langgraph._internal._runnable import RunnableCallable
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import StateGraph
from langgraph.graph._branch import BranchSpec
from langgraph.graph.state import CompiledStateGraph
from langgraph.pregel._write import ChannelWrite
from langgraph.pregel import Pregel

from bot import graph_context
from bot.config import REPEATS_A_REPETITION, WRITE_IT_OTHERWISE, repeats_a_repetition
from bot.kit import Request, in_graph_thread

InputMaker = Callable[[Request, str], dict[str, Any]]
T = TypeVar("T")
MAX_TIMEOUT = 7 * 24 * 3600
SLOW_IMPORT_SECONDS = 10.0  # then a graph module still importing is named (it may be waiting for good)
log = logging.getLogger(__name__)


def _text_input(_request: Request, args: str) -> dict[str, Any]:
    return {"text": args}


def _messages_input(_request: Request, args: str) -> dict[str, Any]:
    """The default input of a graph on ``messages`` alone (``MessagesState``, LangChain's ``create_agent``)."""
    return {"messages": [("user", args)]}


def _plain_text_input(_request: Request, args: str) -> str:
    """The default input of a functional-API ``@entrypoint`` that takes text (``def workflow(topic: str)``)."""
    return args


def _takes_text(graph: Any) -> bool:
    """Whether ``graph`` is an ``@entrypoint`` (or another graph with no state) whose input is text."""
    if isinstance(graph, (StateGraph, CompiledStateGraph)) or not isinstance(graph, Pregel):
        return False
    try:
        return graph.get_input_jsonschema().get("type") == "string"
    except Exception:  # a schema LangGraph cannot describe: the text input, as before
        log.debug("the input schema of %r is unknown", graph, exc_info=True)
        return False


def _input_keys(graph: Any) -> set[str]:
    """The keys of ``graph``'s input state, as far as LangGraph says (none when it cannot)."""
    try:
        if isinstance(graph, StateGraph):
            return set(typing.get_type_hints(graph.input_schema))
        if isinstance(graph, Pregel):
            return set(graph.get_input_jsonschema().get("properties") or {})
    except Exception:  # a schema LangGraph cannot describe: the text input, as before
        log.debug("the input keys of %r are unknown", graph, exc_info=True)
    return set()


# Words chat reads as Baton's own commands before it looks for a graph of that name (bot.routing).
# (``digest`` is one too: the built-in graph of that name is what the scheduler runs, never chat.)
COMMAND_WORDS = {"run": "`run <runbook> key=value`",
                 "force": "`<request> force`: run it again even if it ran recently",
                 "cancel": "`cancel` in a run's thread: stop that run"}
# First words chat reads as commands whatever graphs are installed (bot.routing.COMMAND_WORDS), beside these.
READ_AS_COMMANDS = ("runbook", "digest")
# Other words chat reads as a graph's name (bot.routing): `run restart` is the runbook graph's.
CHAT_NAMES = {"runbook": ("run",)}
# The graph names of Baton's own runs (bot.routing's ROUTER and CHOOSER): a graph's runs under them were taken for
# Baton's (left out of digests and metrics as a model's routing of chatter, shown as a choice card in status).
OWN_RUN_NAMES = {"route": "a model's routing of a remark to no graph, kept for what asking cost",
                 "choose": "a \"Which one?\" card waiting for the requester's pick"}
# A graph's name is what its button on a "Which one?" card (bot.replies.choice_card) sends back, on every platform:
# a click's choice holds 64 characters (bot.messages.InboundClick.action; Slack's handler drops a longer one), and
# Discord's custom_id, ``baton:<name>:<approval id>`` in 100 characters (adapters.discord_render), carries a name of
# a-z, 0-9, '_' and '-' as it is, any other as "~" and its UTF-8 in base64: 57 bytes beside an approval's id of 16.
# A longer name made the whole card fail: the run waited for a card nobody saw until it expired.
CHOICE_CHARS = 64
CHOICE_BYTES = 57
PLAIN_NAME = re.compile(r"[a-z0-9_-]+")


class GraphError(ValueError):
    """A module in ``graphs/`` that cannot be offered as a graph; the message names its file and line."""


# How long one of a graph's PATTERNS is searched in a message before it counts as not found: every request and every
# remark in a Baton thread is searched, in the event loop, and a message may hold 40,000 characters.
PATTERN_SECONDS = 0.1
_RE_FLAGS = ("IGNORECASE", "MULTILINE", "DOTALL", "VERBOSE", "ASCII", "UNICODE", "LOCALE")


def searchable(pattern: str, flags: int) -> regex.Pattern[str]:
    """``pattern`` compiled with ``re``'s ``flags`` as ``regex`` reads them (its syntax is re's, and a search can be
    stopped: ``GraphSpec.matches``). The two modules number their flags differently (re.ASCII is regex.VERSION1)."""
    return regex.compile(pattern, sum(getattr(regex, name) for name in _RE_FLAGS if flags & getattr(re, name)))


@dataclass
class GraphSpec:
    name: str
    graph: Any
    description: str = ""
    example: str = ""
    patterns: list[re.Pattern[str] | regex.Pattern[str]] = field(default_factory=list)
    dedupe: bool = True
    asks_approval: bool = False
    make_input: InputMaker = _text_input
    timeout: float | None | Literal["default"] = "default"  # "default": Baton's BATON_RUN_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        self.patterns = [searchable(p.pattern, p.flags) if isinstance(p, re.Pattern) else p for p in self.patterns]
        if self.make_input is _text_input:  # a graph that takes no text but messages is given the words as one
            keys = _input_keys(self.graph)
            if "messages" in keys and "text" not in keys:
                self.make_input = _messages_input
            elif _takes_text(self.graph):  # LangGraph's docs' ``def workflow(topic: str)`` got {"text": topic}
                self.make_input = _plain_text_input  # type: ignore[assignment]

    def matches(self, text: str) -> bool:
        """Whether one of the graph's patterns is found in ``text``. A search that takes over ``PATTERN_SECONDS`` is
        stopped and counts as not found, said in the log: it held every chat up meanwhile."""
        for pattern in self.patterns:
            try:
                if pattern.search(text, timeout=PATTERN_SECONDS):
                    return True
            except TimeoutError:
                log.warning("graphs.%s: searching PATTERNS %r in a message of %d characters was stopped after %g s "
                            "(taken as not found): write the pattern so that it does not try many ways to match the "
                            "same characters", self.name, pattern.pattern, len(text), PATTERN_SECONDS)
        return False

    def compile(self, checkpointer: BaseCheckpointSaver) -> Pregel:
        if isinstance(self.graph, StateGraph):
            return _exits_contained(self.graph.compile(checkpointer=checkpointer))
        if isinstance(self.graph, Pregel):
            return _exits_contained(self.graph.copy(update={"checkpointer": checkpointer}))
        raise TypeError(f"graphs.{self.name}.graph must be a StateGraph or a compiled graph")


class NodeExited(RuntimeError):
    """A node called ``sys.exit()`` (argparse does, on arguments it cannot read) or raised ``KeyboardInterrupt``,
    or another exception that is no ``Exception`` (a test framework's, a library's ``BaseException``)."""

    @classmethod
    def of(cls, exc: BaseException) -> NodeExited:
        said = f": {exc}" if str(exc) else ""
        return cls(f"a node raised {type(exc).__name__}{said} (a graph's node may fail its run, never stop Baton)")


def _exits_contained(graph: Pregel) -> Pregel:
    """``graph`` whose nodes' and conditional edges' ``SystemExit`` and ``KeyboardInterrupt`` fail the run, not Baton.

    LangGraph runs each node in an asyncio task of its own, and asyncio re-raises those two out of the
    event loop whoever awaits the task: one node's ``sys.exit()`` stopped ``baton run``, and, its request
    being handled again at the next start, stopped it again at every start. So they are caught in the
    node's own functions (subgraphs' included), before they reach a task. (``bot.runtime`` catches them in
    every task a run starts, too; this is for the tasks Python 3.12's LangGraph starts eagerly, which
    asyncio's task factory never sees.)
    """
    for node in graph.nodes.values():
        if isinstance(node.bound, Pregel):
            _exits_contained(node.bound)
        # a node function, as StateGraph and @entrypoint wrap it, and a conditional edge's (a writer)
        for runnable in (node.bound, *node.writers):
            if isinstance(runnable, RunnableCallable) and not isinstance(runnable, ChannelWrite):
                branch = getattr(inspect.unwrap(runnable.func), "__self__", None) if runnable.func else None
                if isinstance(branch, BranchSpec) and isinstance(branch.path, RunnableCallable):
                    _contain_functions(branch.path)  # its own function: a plain one runs in a graph thread
                _contain_functions(runnable)
    return graph


def _contain_functions(runnable: RunnableCallable) -> None:
    for attribute in ("func", "afunc"):
        function = getattr(runnable, attribute)
        if function is None or getattr(function, "baton_contained", False):
            continue
        if _in_default_executor(function):  # a plain function's async side: in a graph thread instead
            setattr(runnable, attribute, _contained_in_graph_thread(function.args[1]))
        else:
            setattr(runnable, attribute, _contained_async(function) if inspect.iscoroutinefunction(function)
                    else _contained(function))


def _in_default_executor(function: Callable[..., Any]) -> bool:
    """LangGraph's async side of a plain function: ``partial(run_in_executor, None, function)``."""
    return (isinstance(function, functools.partial) and function.func is run_in_executor
            and len(function.args) == 2 and function.args[0] is None and not function.keywords)


def _contained_in_graph_thread(function: Callable[..., Any]) -> Callable[..., Any]:
    contained = _contained(function)

    @functools.wraps(function)
    async def run(*args: Any, **kwargs: Any) -> Any:
        return await in_graph_thread(contained, *args, **kwargs)

    run.baton_contained = True  # type: ignore[attr-defined]
    return run


def _contained(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (SystemExit, KeyboardInterrupt) as exc:
            raise NodeExited.of(exc) from None

    run.baton_contained = True  # type: ignore[attr-defined]
    return run


def _contained_async(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    async def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return await function(*args, **kwargs)
        except (SystemExit, KeyboardInterrupt) as exc:
            raise NodeExited.of(exc) from None

    run.baton_contained = True  # type: ignore[attr-defined]
    return run


class GraphRegistry:
    def __init__(self, specs: list[GraphSpec]) -> None:
        self._specs = {spec.name: spec for spec in specs}

    @classmethod
    def discover(cls, package: str = "graphs") -> GraphRegistry:
        root = importlib.import_module(package)
        _check_importable_names(package, root.__path__)
        modules = list(pkgutil.iter_modules(root.__path__))
        _check_one_module_per_name(package, [f"{info.name}/" if info.ispkg else f"{info.name}.py" for info in modules
                                             if not info.name.startswith("_")])
        specs: dict[str, tuple[GraphSpec, ModuleType]] = {}
        for info in modules:
            if info.name.startswith("_"):
                continue
            _check_not_hidden(package, info)
            module = _import(f"{package}.{info.name}")
            if hasattr(module, "graph"):
                specs[info.name] = (_spec_from_module(info.name, module), module)
            else:
                _check_no_graph_meant(module)
        for spec, module in specs.values():
            _check_example_not_taken(spec, module, set(specs))
        return cls([spec for spec, _module in specs.values()])

    def add(self, spec: GraphSpec) -> None:
        """A graph from elsewhere than ``graphs/`` (Baton embedded in another program, tests)."""
        self._specs[spec.name] = spec

    def get(self, name: str) -> GraphSpec | None:
        return self._specs.get(name)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(sorted(self._specs.values(), key=lambda spec: spec.name))

    def names(self) -> list[str]:
        return sorted(self._specs)


def _check_importable_names(package: str, folders: Iterable[str]) -> None:
    """A ``.py`` file Python never imports, having a dot in its name (``roll.back.py``), was left out without a word."""
    for folder in folders:
        for path in sorted(Path(folder).glob("*.py")):
            if "." in path.stem and not path.stem.startswith(("_", ".")):  # not an editor's .#rollback.py
                shown = f"{package.replace('.', '/')}/{path.name}"
                raise GraphError(f"{shown} is no module Python can import (a dot in its name), so it would never be a "
                                 f"graph: name it {path.stem.replace('.', '_').lower()}.py")


def _check_one_module_per_name(package: str, files: list[str]) -> None:
    """Two modules (``deploy.py``, or a package ``deploy/``) chat reads as one graph name (``Deploy.py`` beside
    ``deploy.py``): the first was refused for its capital, with the advice to name it ``deploy.py``, a name taken."""
    seen: dict[str, str] = {}
    for file in sorted(files):
        name = file.removesuffix("/").removesuffix(".py").lower()
        other = seen.setdefault(name, file)
        if other != file:
            shown = package.replace(".", "/")
            raise GraphError(f"{shown}/{other} and {shown}/{file} are one graph to chat (`@baton {name}`): "
                             "remove or rename one of them")


def _check_not_hidden(package: str, info: pkgutil.ModuleInfo) -> None:
    """A module beside a package of the same name is never imported (Python takes the package): one graph
    silently stood in for the other."""
    folder = Path(getattr(info.module_finder, "path", ""))
    if info.ispkg and (folder / f"{info.name}.py").is_file():
        shown = f"{package.replace('.', '/')}/{info.name}"
        raise GraphError(f"{shown}.py is hidden by the package {shown}/ of the same name (Python imports the "
                         f"package, so {shown}.py would never be used): rename or remove one of them")


# What only a graph's module sets: one that sets any of them and defines no ``graph`` meant to be a graph. (Not
# TIMEOUT nor make_input: code the graphs share may well have a TIMEOUT of its own, or the make_input they import.)
GRAPH_SETTINGS = ("DESCRIPTION", "EXAMPLE", "PATTERNS", "DEDUPE", "ASKS_APPROVAL")


def _check_no_graph_meant(module: ModuleType) -> None:
    """A module without ``graph`` is no graph (code the graphs share, say); one that sets a graph's settings is
    a graph under another name (``app = builder.compile()``, as LangGraph's tutorials name it): it was left out
    without a word, ``baton graphs`` and help did not list it, and ``@baton <name>`` was answered with help."""
    settings = [name for name in GRAPH_SETTINGS if hasattr(module, name)]
    if not settings:
        return
    named = [name for name, value in vars(module).items() if isinstance(value, (StateGraph, Pregel))]
    hint = f" (`{named[0]}` is one)" if len(named) == 1 else f" ({', '.join(f'`{n}`' for n in named)} are)" if named \
        else ""
    raise GraphError(f"the graph module {module.__name__} ({module.__file__}): it sets {', '.join(settings)} but "
                     f"defines no `graph`, so chat would never reach it: name its StateGraph builder or compiled graph "
                     f"`graph`{hint}")


def _import(name: str) -> ModuleType:
    """Import a graph module; one that fails is a ``GraphError`` naming the line where it failed in that
    module (a traceback through Baton's start-up named neither the module nor the way to the fix). One that
    takes long is named while it does: ``baton run`` waited for it without a word."""
    slow = threading.Timer(SLOW_IMPORT_SECONDS, _still_importing, (name,))
    slow.daemon = True
    slow.start()
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as exc:  # sys.exit("set DEPLOY_TOKEN") at import; Ctrl-C still stops the start
        origin = getattr(importlib.util.find_spec(name), "origin", None) or name
        where = origin
        if isinstance(exc, SyntaxError) and exc.filename == origin:
            where = f"{origin}, line {exc.lineno}"
        else:
            lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == origin]
            where = f"{origin}, line {lines[-1]}" if lines else origin
        raise GraphError(f"the graph module {name} cannot be imported ({where}): "
                         f"{type(exc).__name__}: {exc}") from exc
    finally:
        slow.cancel()


def _still_importing(name: str) -> None:
    origin = getattr(importlib.util.find_spec(name), "origin", None) or name
    log.warning("importing the graph module %s (%s) has taken %s so far; Baton starts once it is done. A graph "
                "module should do no waiting work at import (a network call, a download, a lock): do it in a node",
                name, origin, f"{SLOW_IMPORT_SECONDS:g}s")


def _spec_from_module(name: str, module: ModuleType) -> GraphSpec:
    """The module's graph and settings, checked now: a wrong one failed only when someone asked for it."""
    where = f"the graph module {module.__name__} ({module.__file__})"
    if not isinstance(module.graph, (StateGraph, Pregel)):
        raise GraphError(f"{where}: `graph` must be a StateGraph builder or a compiled graph, "
                         f"not {type(module.graph).__name__}")
    unusable = _cannot_run(module.graph)
    if unusable:
        raise GraphError(f"{where}: {unusable}")
    if isinstance(module.graph, Pregel) and (module.graph.interrupt_before_nodes or module.graph.interrupt_after_nodes):
        # A static breakpoint ends the stream like the end of the graph: the run was reported done, and
        # the nodes after the breakpoint never ran.
        raise GraphError(f"{where}: compiled with interrupt_before/interrupt_after, which Baton cannot resume; "
                         "call interrupt() (or bot.kit.approve()) in the node instead")
    # In any case: `Cancel.py` was told to be named cancel.py, which is refused as one of these.
    if (word := name.lower()) in COMMAND_WORDS:
        raise GraphError(f"{where}: `{word}` is a command of Baton's own ({COMMAND_WORDS[word]}), read before any "
                         f"graph: `@baton {word}` would never reach this one; name the module otherwise")
    if word in OWN_RUN_NAMES:
        raise GraphError(f"{where}: `{word}` is the name of Baton's own runs ({OWN_RUN_NAMES[word]}): this graph's "
                         "runs would be taken for those in digests, metrics and status; name the module otherwise")
    if any(character.isspace() for character in name):
        raise GraphError(f"{where}: chat reads a request's first word as the graph's name (`@baton {name}` looks for "
                         f"`{name.split()[0].lower()}`): name the module {'_'.join(name.split()).lower()}.py")
    if name != name.lower():
        raise GraphError(f"{where}: chat asks for graphs in lower case (`@baton {name}` looks for "
                         f"`{name.lower()}`): name the module {name.lower()}.py")
    if len(name) > CHOICE_CHARS or (not PLAIN_NAME.fullmatch(name) and len(name.encode()) > CHOICE_BYTES):
        raise GraphError(f"{where}: a graph's name is what its button on a \"Which one?\" card sends back, which "
                         f"holds {CHOICE_CHARS} characters, or {CHOICE_BYTES} bytes of UTF-8 for a name not only of "
                         f"a-z, 0-9, '_' and '-' (Discord's custom_id): `{name}` has {len(name)} characters, "
                         f"{len(name.encode())} bytes; name the module shorter")
    patterns = getattr(module, "PATTERNS", [])
    if not isinstance(patterns, (list, tuple)):
        given = "one string" if isinstance(patterns, str) else type(patterns).__name__
        raise GraphError(f"{where}: PATTERNS must be a list of regular expressions, not {given}")
    compiled = []
    for pattern in patterns:
        if isinstance(pattern, re.Pattern) and isinstance(pattern.pattern, str):  # compiled: its own flags too
            pattern, flags = pattern.pattern, pattern.flags | re.IGNORECASE
        else:
            flags = re.IGNORECASE
        if not isinstance(pattern, str):  # bytes matched no chat text: routing broke for every request
            raise GraphError(f"{where}: PATTERNS: {pattern!r} is not a regular expression: write it as text")
        try:  # OverflowError: a count over 4,294,967,295; RecursionError: groups nested a thousand deep
            re.compile(pattern, flags)
            compiled.append(searchable(pattern, flags))
            slow = repeats_a_repetition(pattern, flags)
        except (re.error, regex.error, OverflowError, RecursionError) as exc:
            raise GraphError(f"{where}: PATTERNS: {pattern!r} is not a regular expression: {exc}") from None
        if slow:  # searched in every request, and every remark in a Baton thread: one remark held up all of Baton
            raise GraphError(f"{where}: PATTERNS: {pattern!r} {REPEATS_A_REPETITION}: on a long remark that almost "
                             f"matches, searching it takes minutes, and Baton answers nobody meanwhile. "
                             f"{WRITE_IT_OTHERWISE}")
        if compiled[-1].search(""):
            raise GraphError(f"{where}: PATTERNS: {pattern!r} matches any text (even an empty one): every request "
                             "and every remark in a Baton thread would run this graph")
    make_input = getattr(module, "make_input", None)
    if make_input is not None and not callable(make_input):
        raise GraphError(f"{where}: make_input must be a function (request, text) -> dict, "
                         f"not {type(make_input).__name__}")
    if make_input is not None and (inspect.iscoroutinefunction(make_input) or inspect.isasyncgenfunction(make_input)):
        # its coroutine was taken for the graph's input: "InvalidUpdateError: Expected dict, got <coroutine ...>"
        raise GraphError(f"{where}: make_input must be a plain function (def, not async def): Baton calls it as it "
                         "routes the request; do the waiting work in a node")
    if make_input is not None and not _takes_two(make_input):  # each request was told it "could not be read"
        raise GraphError(f"{where}: make_input must take two arguments, (request, text): "
                         f"make_input{inspect.signature(make_input)}")
    return GraphSpec(
        name=name,
        graph=module.graph,
        description=_setting(module, "DESCRIPTION", str, _first_line(module.__doc__), where),
        example=_example(module, name, compiled, where),
        patterns=compiled,
        dedupe=_setting(module, "DEDUPE", bool, True, where),
        asks_approval=_setting(module, "ASKS_APPROVAL", bool, False, where),
        make_input=_input_told(name, make_input, isinstance(module.graph, (StateGraph, CompiledStateGraph)))
        if make_input is not None else _text_input,
        timeout=_timeout(module, where),
    )


def _cannot_run(graph: StateGraph | Pregel) -> str | None:
    """Why ``graph`` would fail every run, found now rather than at the first request."""
    if isinstance(graph, StateGraph):
        try:
            graph = graph.compile()
        except Exception as exc:  # a builder with no entry, an edge to no node...
            return f"`graph` does not compile: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    uncached = _uncached_node(graph)
    if uncached is not None:
        # LangGraph skips a cache_policy when the graph has no cache (Baton compiles a builder with none): the node
        # ran every time, without a word
        return (f"its node `{uncached}` has a cache_policy, but the graph has no cache to keep its results in: "
                "compile it with one (`graph = builder.compile(cache=InMemoryCache())`, from langgraph.cache.memory: "
                "kept by each Baton process until it stops), or drop the cache_policy")
    refused_context = graph_context.refusal(graph)
    if refused_context is not None:
        return refused_context
    for path, subgraph in _subgraphs(graph):
        # checkpointer=False: LangGraph fails it under durability="sync", which Baton runs every graph with
        # ("'AsyncPregelLoop' object has no attribute '_put_checkpoint_fut'")
        if subgraph.checkpointer is False:
            return (f"its subgraph `{path}` is compiled with checkpointer=False, which LangGraph cannot run "
                    "with the durable checkpoints Baton keeps (durability='sync'): compile it without a checkpointer "
                    "(it then keeps its state in Baton's)")
        # A breakpoint ended the run as done ("Done."): the subgraph's nodes from there and the parent's after it
        # never ran (the top graph's own are refused in ``_spec_from_module``).
        if subgraph.interrupt_before_nodes or subgraph.interrupt_after_nodes:
            return (f"its subgraph `{path}` is compiled with interrupt_before/interrupt_after, which Baton "
                    "cannot resume; call interrupt() (or bot.kit.approve()) in the node instead")
    return None


def _uncached_node(graph: Pregel) -> str | None:
    """A node (``review/check`` in a subgraph) with a ``cache_policy`` that no cache serves, or ``None``."""
    if graph.cache is not None:  # the top graph's cache serves its subgraphs' nodes too
        return None
    graphs = [("", graph), *((f"{path}/", subgraph) for path, subgraph in _subgraphs(graph))]
    return next((f"{path}{name}" for path, each in graphs if each.cache is None
                 for name, node in each.nodes.items() if node.cache_policy is not None), None)


def _subgraphs(graph: Pregel, path: str = "") -> Iterator[tuple[str, Pregel]]:
    """Every compiled subgraph that is a node of ``graph``, at any depth, with its path (``review/check``)."""
    for name, node in graph.nodes.items():
        if isinstance(node.bound, Pregel):
            yield f"{path}{name}", node.bound
            yield from _subgraphs(node.bound, f"{path}{name}/")


def _takes_two(function: Callable[..., Any]) -> bool:
    try:
        inspect.signature(function).bind(None, "")
    except TypeError:
        return False
    except ValueError:  # no signature to read (some builtins): it is tried at the first request
        return True
    return True


def _example(module: ModuleType, name: str, patterns: list[regex.Pattern[str]], where: str) -> str:
    """The request help shows for the graph, which must reach it: ``EXAMPLE = "web"`` (the argument only) was shown
    as "`web` — Roll a service back", and `@baton web` was answered "I don't know how to handle `web`"."""
    example = _setting(module, "EXAMPLE", str, name, where)
    words = example.split()
    if not words:
        raise GraphError(f"{where}: EXAMPLE is empty: write a whole request help can show, such as `{name}`")
    if words[0].startswith("@") and len(words) > 1:  # help says to mention the bot, as each platform writes it
        raise GraphError(f"{where}: EXAMPLE {example!r} begins with a mention: write the request without it, "
                         f"`{' '.join(words[1:])}`")
    asked = words[1:] if words[0].lower() == "force" and len(words) > 1 else words  # "force" first: run it again
    if asked[0].lower() not in (name, *CHAT_NAMES.get(name, ())) and not any(p.search(example) for p in patterns):
        raise GraphError(f"{where}: EXAMPLE {example!r} would not reach this graph (`@baton {example}` looks for a "
                         f"graph `{asked[0].lower()}`): write the whole request help shows, such as `{name} {example}`")
    return example


def _check_example_not_taken(spec: GraphSpec, module: ModuleType, names: set[str]) -> None:
    """An example reached by the graph's PATTERNS, but whose first word chat reads before any pattern (bot.routing):
    a command of Baton's own or another graph's name. Help listed `run the nightly backup`, which was answered
    "I don't know a runbook called `the`", and `status of the nightly backup` showed the channel's status."""
    words = spec.example.split()
    first = (words[1:] if words[0].lower() == "force" and len(words) > 1 else words)[0].lower()
    if first == spec.name or first in CHAT_NAMES.get(spec.name, ()):
        return
    if first in COMMAND_WORDS or first in READ_AS_COMMANDS:
        taken = f"`{first}` (a command of Baton's own)"
    elif first in names:
        taken = f"the graph `{first}`"
    else:
        return
    raise GraphError(f"the graph module {module.__name__} ({module.__file__}): EXAMPLE {spec.example!r} would not "
                     f"reach this graph: chat reads its first word as {taken}, before any graph's PATTERNS: write the "
                     f"request help shows otherwise, such as `{spec.name} {' '.join(words[1:])}`".rstrip())


def _timeout(module: ModuleType, where: str) -> float | None | Literal["default"]:
    if not hasattr(module, "TIMEOUT"):
        return "default"
    value = module.TIMEOUT
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TIMEOUT \
            or math.isnan(value):
        raise GraphError(f"{where}: TIMEOUT must be a number of seconds above 0 and at most {MAX_TIMEOUT:,} "
                         f"(a week), or None for no limit; not {value!r}")
    return float(value)


def _setting(module: ModuleType, name: str, kind: type[T], default: T, where: str) -> T:
    """A module setting of the type it must have (``DEDUPE = "false"`` read as true, silently)."""
    value = getattr(module, name, default)
    if not isinstance(value, kind):
        wanted = "True or False" if kind is bool else "text"
        raise GraphError(f"{where}: {name} must be {wanted}, not {type(value).__name__}")
    return value


def _input_told(name: str, make_input: InputMaker, state_graph: bool = False) -> InputMaker:
    """The module's ``make_input``, whose refusal of a request (an exception) is told to the requester, as a
    node's exception is, instead of "Something went wrong". What it returns that no run can start from is
    refused the same way (``state_graph``: the graph's input is its state, so text or a list is none)."""

    def make(request: Request, args: str) -> dict[str, Any]:
        from bot.routing import RouteError  # bot.routing imports this module

        try:
            made = make_input(request, args)
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # argparse's sys.exit() too: Baton's own task
            raise RouteError(f"`{name}` could not read this request: {_refusal(exc)}. Nothing was run.") from exc
        wrong = _not_an_input(made, state_graph)
        if wrong is not None:
            log.warning("graph %s: make_input returned %s", name, wrong)
            raise RouteError(f"`{name}` could not read this request: its make_input returned {wrong}. Nothing was run.")
        return made

    return make


def _not_an_input(made: Any, state_graph: bool) -> str | None:
    """Why what ``make_input`` returned starts no run, or ``None``.

    ``None`` is LangGraph's "go on from where the thread stopped": in a thread the graph had run in, the
    request was answered with the earlier run's reply, as done, and nothing ran. A ``StateGraph`` takes its
    state (a dict) and failed on anything else after the run had started ("Expected dict, got ...")."""
    if made is None:
        return "None, not the graph's input (a dict of its state)"
    if inspect.isawaitable(made):  # a plain function handing on an async one's coroutine, never awaited
        if inspect.iscoroutine(made):
            made.close()
        return f"{type(made).__name__}, not the graph's input: make_input is called, not awaited"
    if state_graph and isinstance(made, (str, bytes, int, float, list, tuple, set)):
        return f"{type(made).__name__}, not the graph's input (a dict of its state)"
    return None


def _refusal(exc: BaseException) -> str:
    """Why ``make_input`` refused: its exception's message; ``sys.exit(2)``'s is no sentence, so it is named."""
    said = str(exc).splitlines()[0][:300] if str(exc) else ""
    if isinstance(exc, Exception) or (exc.args and isinstance(exc.args[0], str)):
        return said or type(exc).__name__
    return f"{type(exc).__name__}: {said}" if said else type(exc).__name__


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""
