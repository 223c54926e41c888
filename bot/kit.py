"""The graph author's kit: post progress, ask a human, and run side effects at most once.

Graphs import only ``langgraph`` and this module. Inside a node:

    from bot.kit import progress, approve, effect, chat

    async def restart(state):
        progress("Restarting web...")
        decision = approve("Restart web?", details={"host": "web-1"})
        ...

``approve`` calls LangGraph's ``interrupt()``; put anything with an effect *after* it (in the next
node), because a node re-runs from its start when it resumes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import json
import os
import queue
import re
import threading
import unicodedata
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langgraph._internal._constants import CONFIG_KEY_SCRATCHPAD
from langgraph.config import get_config, get_stream_writer
from langgraph.errors import GraphInterrupt
from langgraph.types import interrupt
from pydantic import BaseModel

from bot import approvals
from bot.config import BatonConfig
from bot.recent import forget_oldest
from bot.lookalikes import shown_argument  # for graph authors: an argument as what it is, on a card
from bot.messages import quoted, quoted_code, storable  # for graph authors: quoting what someone wrote; text to store
from bot.model_usage import KIT_CALL  # the kit records its replies; bot.model_usage, the others
from bot.models import ModelFailed, ModelRequired
from bot.settings import MODEL_KEY_VARIABLES, SECRET_VARIABLES, exported_variables

T = TypeVar("T")
S = TypeVar("S", bound=BaseModel)
APPROVAL_MARK = "baton.approval"
APPROVAL_TEXT_LIMIT = 3000  # what an approval card shows of its question (bot.orchestrator cuts the rest)
PROGRESS_MARK = "baton.progress"


@dataclass(frozen=True)
class Request:
    """The chat request a run serves."""

    platform: str
    channel: str
    thread: str
    user: str
    text: str
    private: bool = False  # a direct message: nobody but its sender sees it, so no approver sees a card there


@dataclass(frozen=True)
class Decision:
    """A human's answer to ``approve()``."""

    approved: bool
    by: str
    at: datetime

    def __bool__(self) -> bool:  # ``if approve(...):`` went on after a Reject: a dataclass is always true
        return self.approved

    @classmethod
    def from_resume(cls, value: dict[str, Any]) -> Decision:
        return cls(approved=bool(value["approved"]), by=str(value["by"]), at=datetime.fromisoformat(value["at"]))


class RunContext(Protocol):
    """What the core offers a running graph (implemented in ``bot.runtime``)."""

    request: Request
    config: BatonConfig
    model: BaseChatModel | None
    model_deadline: float  # seconds one model call may take, its retries included

    async def record_usage(self, reply: Any, model: str | None = None) -> None:
        """Add a model reply's tokens (and their cost, when the price is known) to the run. ``model``: the
        ``provider:model`` whose price applies (``bot.model_usage``); ``None``: ``BATON_MODEL``'s."""

    async def history(self, scope: Literal["thread", "channel"], limit: int) -> list[dict[str, Any]]:
        """Recent messages (``user``, ``text``, ``is_bot``), oldest first."""

    def catalog(self) -> list[dict[str, Any]]:
        """The graphs and runbooks this Baton knows: name, kind, description, example, risk."""

    async def channel_activity(self) -> list[dict[str, Any]]:
        """Threads of this channel that are running or waiting, with their waiting approvals (``summary``,
        ``approvers``, ``age``, and ``expires_in``: when the card expires, ``None`` when it never does)."""

    async def run_effect_once(self, key: str, name: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` unless the ledger already has ``key``; return its recorded result."""


_current: contextvars.ContextVar[RunContext] = contextvars.ContextVar("baton_run_context")


def duration(seconds: float) -> str:
    """A span of time for people: 40ms, 4.2s, 13s, 12m, 3h 5m, 1h, 2d 4h, 1d."""
    seconds = max(0.0, float(seconds))
    if round(seconds * 1000) < 1000:
        return f"{round(seconds * 1000)}ms"
    if round(seconds, 1) < 10:
        return f"{round(seconds, 1):.1f}s"
    if round(seconds) < 60:
        return f"{round(seconds)}s"
    seconds = max(seconds, 60.0)  # 59.6 s is "1m", not "0m"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m"
    if seconds < 86400:
        hours, minutes = seconds // 3600, seconds % 3600 // 60
        return f"{hours:.0f}h {minutes:.0f}m" if minutes else f"{hours:.0f}h"  # "1h", not "1h 0m"
    days, hours = seconds // 86400, seconds % 86400 // 3600
    return f"{days:.0f}d {hours:.0f}h" if hours else f"{days:.0f}d"


def current() -> RunContext:
    """The context of the run this node belongs to (only valid inside a Baton run)."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("bot.kit is only usable inside a graph run started by Baton") from None


def bind(context: RunContext) -> contextvars.Token[RunContext]:
    return _current.set(context)


def unbind(token: contextvars.Token[RunContext]) -> None:
    _current.reset(token)


def progress(text: str) -> None:
    """Post an intermediate result in the thread (LangGraph custom stream)."""
    get_stream_writer()({"baton": PROGRESS_MARK, "text": str(text)})


def approve(
    summary: str,
    *,
    details: dict[str, Any] | None = None,
    risk: Literal["low", "high"] = "high",
    approvers: list[str] | None = None,
    runbook: str | None = None,
) -> Decision:
    """Stop until a human approves or rejects; returns their ``Decision``.

    ``approvers`` defaults to the graph's approvers from ``baton.yaml`` (one approver may be given as
    text); ``runbook``: those of that runbook of ``baton.yaml`` instead, as it is when the click comes
    (a change of baton.yaml reaches a card that waits). A requester may never decide their own
    ``high``-risk request. ``details`` are shown on the card as text: values that are not JSON (a
    datetime, say) are shown as ``str()`` makes them.
    """
    if len(str(summary)) > APPROVAL_TEXT_LIMIT:  # the approver would decide on text they cannot see
        raise ValueError(f"approve(): the question is {len(str(summary)):,} characters; an approval card shows "
                         f"{APPROVAL_TEXT_LIMIT:,}: shorten it, or put the rest in details")
    if risk not in ("low", "high"):
        raise ValueError(f"approve(): risk must be 'low' or 'high', not {risk!r}")
    if details is not None and not isinstance(details, dict):
        raise TypeError(f"approve(): details must be a dict (a name for each value), not {type(details).__name__}")
    if isinstance(approvers, str):
        approvers = [approvers]
    if approvers is not None and not all(isinstance(name, str) for name in approvers):
        raise TypeError(f"approve(): approvers must be user ids (text), not {approvers!r}")
    nobody = approvers is not None and not approvers  # the graph's own empty list (a runbook's comes from baton.yaml)
    own = approvers is not None  # the graph's own approvers (a runbook's come from baton.yaml, checked at start)
    # Checked as baton.yaml checks its own: a name no click matches made a card that waited a day.
    misnamed = next(filter(None, map(_approver_problem, approvers or [])), None)
    if runbook is not None:
        if approvers is not None:
            raise ValueError("approve(): give approvers or a runbook whose approvers decide, not both")
        if runbook not in current().config.runbooks:
            raise ValueError(f"approve(): baton.yaml has no runbook {runbook!r}")
        approvers = current().config.approvers_for_runbook(runbook)
    try:
        value = interrupt({"baton": APPROVAL_MARK, "summary": summary, "details": _shown_details(details or {}),
                           "risk": risk, "approvers": approvers, "runbook": runbook})
    except GraphInterrupt as stop:  # how the run stops here; a node's `except Exception` may catch it (``asked``)
        # Checked only when the question is asked: a node resumed with its decision gets it whatever it says now
        # (the runbook graph asks of nobody when its runbook left baton.yaml since; the decision still counts).
        if not str(summary).strip():  # a card with no question on it, which its approvers could still approve
            raise ValueError("approve(): the question is empty: say what is to be decided (details are shown below "
                             "it)") from None
        if nobody:  # the card waited for good, and a click was told "add `approvers` in baton.yaml"
            raise ValueError("approve(): approvers is empty, so nobody could approve: name them, or leave approvers "
                             "out for the graph's approvers from baton.yaml") from None
        if misnamed is not None:
            raise ValueError(f"approve(): {misnamed}") from None
        context = _current.get(None)
        unseen = _nobody_may_approve(approvers or [], risk, context.request) if own and context is not None else None
        if unseen is not None:  # the card waited a day; clicks were told to "add approvers in baton.yaml"
            raise ValueError(f"approve(): {unseen}") from None
        if context is not None:
            asked(context).append((str(summary), stop.args[0][0].id if stop.args and stop.args[0] else None))
        raise
    return Decision.from_resume(value)


def _approver_problem(name: str) -> str | None:
    """What is wrong with an approver a graph named (as baton.yaml says of its own), or ``None``."""
    if not name.strip():
        return "an approver is empty: remove it, or write the user id"
    if name != name.strip():
        return f"the approver '{name}' has spaces around it: write '{name.strip()}'"
    hidden = next((c for c in name if unicodedata.category(c) in ("Cf", "Cc")), None)
    if hidden is not None:  # pasted from a document: it looks like the id, and never matches it
        shown = "".join(c for c in name if unicodedata.category(c) not in ("Cf", "Cc"))
        return f"the approver '{shown}' holds an invisible character (U+{ord(hidden):04X}): write the id again by hand"
    return None


def _nobody_may_approve(approvers: Sequence[str], risk: str, request: Request) -> str | None:
    """Why nobody could approve a card the graph named ``approvers`` for, or ``None``: each is another platform's
    (``slack:U1`` on Discord, where no click is his), or, on a high-risk request, the one who asked."""
    here = approvals.clicking_on(list(approvers), request.platform)
    if not here:
        return (f"none of its approvers ({', '.join(approvers)}) can click on {request.platform}, where its card is "
                f"posted: name one who can")
    if not approvals.who_may_approve(here, request.user, risk):
        return (f"its only approver is {request.user}, who asked for it: a high-risk request needs someone else to "
                "approve it; name another approver, or ask with risk='low'")
    return None


_asked: weakref.WeakKeyDictionary[RunContext, list[tuple[str, str | None]]] = weakref.WeakKeyDictionary()


def asked(context: RunContext) -> list[tuple[str, str | None]]:
    """The questions ``approve()`` stopped the run for since the list was last cleared (``bot.runtime``), with their
    interrupt ids: one that no checkpoint of the run stored was caught (LangGraph's ``GraphInterrupt``) on its way
    out."""
    return _asked.setdefault(context, [])


def _shown_details(details: dict[str, Any]) -> dict[str, Any]:
    """``details`` as the approval stores them: JSON (the database's JSON takes no NaN or infinity)."""
    try:
        return json.loads(json.dumps(details, default=str, allow_nan=False))  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"approve(): details must be JSON (text, numbers, booleans, None, lists, dicts): {exc}") from None


async def chat(messages: Sequence[BaseMessage], *, tools: Sequence[dict[str, Any]] | None = None,
               what: str = "This") -> AIMessage:
    """Call the configured model (recording its tokens and cost); ``ModelRequired`` without one.

    Keep it out of nodes that call ``approve()``: a node re-runs from its start on resume.
    """
    context = current()
    if context.model is None:
        raise ModelRequired(what)
    model = context.model.bind_tools(list(tools)) if tools else context.model
    try:
        reply = await asyncio.wait_for(model.ainvoke(_without_secrets(context, messages), {"tags": [KIT_CALL]}),
                                       context.model_deadline)
    except TimeoutError as exc:
        raise ModelFailed(f"no answer within {context.model_deadline:g}s") from exc
    except Exception as exc:
        raise ModelFailed(str(exc)) from exc
    await context.record_usage(reply)
    return reply  # type: ignore[return-value]


async def structured(messages: Sequence[BaseMessage], schema: type[S], *, what: str = "This") -> S:
    """Ask the model for an answer in ``schema`` (a pydantic model), recording its usage."""
    context = current()
    if context.model is None:
        raise ModelRequired(what)
    try:
        result = await asyncio.wait_for(context.model.with_structured_output(schema, include_raw=True)
                                        .ainvoke(_without_secrets(context, messages), {"tags": [KIT_CALL]}),
                                        context.model_deadline)
    except TimeoutError as exc:
        raise ModelFailed(f"no answer within {context.model_deadline:g}s") from exc
    except Exception as exc:
        raise ModelFailed(str(exc)) from exc
    await context.record_usage(result["raw"])
    if result.get("parsed") is None:
        raise ValueError(f"the model's answer did not fit {schema.__name__}: {result.get('parsing_error')}")
    return result["parsed"]  # type: ignore[no-any-return]


def _without_secrets(context: RunContext, messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """``messages`` with Baton's secrets redacted, as in chat: whatever a graph puts in them (a command's
    output, an error) goes to the model's provider, outside."""
    redact = getattr(context, "redact", None)
    if redact is None:
        return list(messages)
    return [message.model_copy(update={"content": _redacted_content(message.content, redact)})
            for message in messages]


def _redacted_content(content: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(content, str):
        return redact(content)
    if isinstance(content, list):  # content blocks: the text ones
        return [{**block, "text": redact(block["text"])} if isinstance(block, dict) and isinstance(block.get("text"), str)
                else redact(block) if isinstance(block, str) else block for block in content]
    return content


async def history(scope: Literal["thread", "channel"] = "thread", limit: int = 50) -> list[dict[str, Any]]:
    """The thread's (or channel's) recent messages, oldest first."""
    context = current()
    messages = await context.history(scope, limit)
    people_read(context).update(str(message["user"]) for message in messages if message.get("user"))
    return messages


_people_read: weakref.WeakKeyDictionary[RunContext, set[str]] = weakref.WeakKeyDictionary()


def people_read(context: RunContext) -> set[str]:
    """The people the run's graph read of: who wrote the messages ``history()`` returned (a summary's ``user: text``
    lines), whom ``channel_activity()`` named (who asked, whom a card waits for). A reply naming them names people,
    whom the run's reply shows as mentions (``Message.people``)."""
    return _people_read.setdefault(context, set())


def effect(name: str, fn: Callable[[], Awaitable[T] | T]) -> Awaitable[T]:
    """Run a side effect at most once for this node execution, even if the node re-runs (``await`` it, in an
    async node).

    The key is (thread, LangGraph task id, ``name``): the task id is the same when a node is
    replayed after a resume or a crash, so the second time returns the recorded result. A node that
    calls ``effect`` with one name several times (in a loop) runs each call once, in the order it makes them.

    ``fn`` may be async, or a plain function (run in a worker thread, so that a slow one does not
    hold the event loop, and with it every other run and this replica's leases). Its result is kept
    in the ledger as JSON, so it must be JSON (text, numbers, booleans, ``None``, lists, dicts); the node gets it
    as the ledger gives it back when the node runs again (a tuple as a list, a key ``1`` as ``"1"``).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # a plain node, run in a worker thread: the effect would never be awaited, so never run
        raise RuntimeError(f"side effect '{name}': effect() runs in an async node (`async def node(state): ... "
                           "await effect(...)`); this node is a plain function") from None
    configurable = get_config()["configurable"]
    key = f"{configurable['thread_id']}|{configurable.get('checkpoint_ns', '')}|{name}{_repeat_suffix(configurable, name)}"

    async def once() -> T:
        if inspect.iscoroutinefunction(fn):
            result = await fn()
        else:
            result = await in_graph_thread(fn)
            if inspect.isawaitable(result):  # a lambda around an async function
                result = await result
        try:
            recorded = json.dumps(result, allow_nan=False)  # PostgreSQL's JSON takes no NaN
        except (TypeError, ValueError) as exc:  # the ledger's write failed later, and the thread with it
            raise TypeError(f"side effect '{name}' ran, but its result cannot be recorded ({exc}): "
                            "return JSON (text, numbers, booleans, None, lists, dicts)") from None
        # As the ledger gives it back to the node run again: a tuple was a list then, a dict's key 1 was "1".
        return json.loads(recorded)  # type: ignore[no-any-return]

    return current().run_effect_once(key, name, once)


# The effect names each attempt of a node has used in a run, and how often: by the run, then by the id of the
# attempt's scratchpad, (the scratchpad, counts), the newest ``ATTEMPTS_KEPT``. Kept on the run, not in a ContextVar:
# each task ``asyncio.gather`` starts copies the context, and effects of one name gathered in one node ("restart"
# on three hosts at once) each counted it as its first: they shared one key, and only the first host restarted.
_effects_of_attempts: weakref.WeakKeyDictionary[Any, dict[int, tuple[object, dict[str, int]]]] = \
    weakref.WeakKeyDictionary()
ATTEMPTS_KEPT = 1024


def _repeat_suffix(configurable: dict[str, Any], name: str) -> str:
    """``""`` for a node's first effect called ``name``, ``#2``, ``#3``... for the next ones (an effect in a
    loop over hosts): each is an effect of its own, found again in that order when the node runs again. A name that
    ends as such a suffix does (``page#2``) has ``#1`` too, so that it is never the second ``page``'s key: that
    effect never ran, and returned the second page's result.

    LangGraph gives each attempt of a node (a first run, a resume, a retry) a scratchpad of its own and
    counts the node's ``interrupt()`` calls on it; effects are counted per attempt the same way.
    """
    attempt = configurable.get(CONFIG_KEY_SCRATCHPAD)
    attempts = _effects_of_attempts.setdefault(current(), {})
    known = attempts.pop(id(attempt), None)
    if known is None or known[0] is not attempt:  # (the scratchpad kept with it: an id is reused once it is freed)
        known = (attempt, {})
    attempts[id(attempt)] = known  # the newest last
    forget_oldest(attempts, ATTEMPTS_KEPT)
    counts = known[1]
    counts[name] = counts.get(name, 0) + 1
    return "" if counts[name] == 1 and not _REPEAT.search(name) else f"#{counts[name]}"


_REPEAT = re.compile(r"#[0-9]+$")


GRAPH_THREADS = 64  # threads for graphs' blocking code; one that never returns keeps its thread


class _GraphThreads(concurrent.futures.Executor):
    """The threads a graph's blocking code runs in (a plain node, a plain effect): not the event loop's default
    executor, and daemon threads.

    In the default executor (6 threads on 2 cores), a few plain nodes waiting on calls that never answer (their
    runs stopped by their time limit, their threads not) held every thread: each later plain node waited for
    good, and so did Baton's own work there (its HTTP clients' DNS lookups, so Slack heard nothing more); and
    ``baton run`` stopped with Ctrl-C never exited, waiting for those threads.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._work: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._started = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._work.put((future, functools.partial(fn, *args, **kwargs)))
        if not self._idle.acquire(blocking=False):  # no thread waiting for work: one more, up to the size
            with self._lock:
                if self._started < self._size:
                    self._started += 1
                    threading.Thread(target=self._serve, name=f"baton-graph-{self._started}", daemon=True).start()
        return future

    def _serve(self) -> None:
        while True:
            future, call = self._work.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as exc:  # the awaiting node gets it (SystemExit too: bot.registry fails the run)
                    future.set_exception(exc)
            del future, call
            self._idle.release()


_graph_threads = _GraphThreads(GRAPH_THREADS)


async def in_graph_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a graph thread (``_GraphThreads``), in the caller's context (the run's config)."""
    context = contextvars.copy_context()

    def call() -> T:
        try:
            return context.run(fn, *args, **kwargs)
        except StopIteration as exc:  # an asyncio future cannot take it: the node would wait for good
            raise RuntimeError(f"StopIteration: {exc}") from exc

    return await asyncio.get_running_loop().run_in_executor(_graph_threads, call)


def command_environment(keep: Iterable[str] = ()) -> dict[str, str]:
    """The environment for a command a graph runs: Baton's own as it is now (the shell's that started Baton), without
    what is Baton's alone: its secrets (``SECRET_VARIABLES``, in any case, as the settings read them), the model
    providers' keys (``MODEL_KEY_VARIABLES``), and what Baton itself put there from ``.env``. A command has no use
    for them, and its output is posted. ``keep``: names of those a command needs after all (a runbook's ``env:``);
    Baton's own secrets are never kept.

    Built from ``os.environ`` at each call: a variable set or removed since (by Baton's code, a graph, a test) must
    count, and a copy of ~100 variables costs microseconds beside the process it is for. Only the names to leave
    out are cached, until ``.env`` is exported again."""
    withheld = _withheld()
    kept = {name.upper() for name in keep} - SECRET_VARIABLES if keep else set()
    return {name: value for name, value in os.environ.items()
            if (upper := name.upper()) not in withheld or upper in kept}


_withheld_cache: tuple[frozenset[str] | None, frozenset[str]] = (None, frozenset())


def _withheld() -> frozenset[str]:
    """The names (in capitals) kept from commands unless a runbook names them, for the ``.env`` export as it is."""
    global _withheld_cache
    exported = exported_variables()
    if _withheld_cache[0] is not exported:
        _withheld_cache = (exported, SECRET_VARIABLES | MODEL_KEY_VARIABLES | {name.upper() for name in exported})
    return _withheld_cache[1]
