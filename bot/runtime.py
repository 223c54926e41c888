"""Runs graphs with the checkpointer: streams progress, reports interrupts or the final state.

Also implements ``bot.kit.RunContext``: what a running graph may ask of the core (catalog,
channel activity, the effects ledger).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.pregel import Pregel
from langgraph.types import Command, Interrupt
from pydantic import BaseModel
from sqlalchemy import DateTime, bindparam, func, update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot import audit, graph_context, kit, model_usage, threads, tool_review
from bot.approvals import waiting_for
from bot.config import BatonConfig, Price
from bot.messages import Location, Message, first_line, quoted, storable, storable_value
from bot.models import cost_of, model_key, usage_of
from bot.no_store import NO_STORE
from bot.redaction import Redactor
from bot.registry import GraphRegistry, GraphSpec, NodeExited
from bot.replies import age
from bot.routing import CHOOSER
from storage.checkpointer import CheckpointFence, checkpoint_fence, fail_waiting_calls
from storage.db import Database, Transaction, insert_ignore, prepared
from storage.models import Approval, Effect, InboundEvent, OutboxMessage, Run, ThreadRecord

T = TypeVar("T")

_EFFECTS = Effect.__table__  # type: ignore[attr-defined]
_FINISH_EFFECT = prepared(update(_EFFECTS).where(_EFFECTS.c.key == bindparam("effect_key")).values(
    status=bindparam("status"), result=bindparam("result", type_=_EFFECTS.c.result.type),
    finished_at=bindparam("now", type_=DateTime())))

ProgressSink = Callable[[str], Awaitable[None]]
RUN_METADATA = "baton_run"  # the checkpoint metadata key naming Baton's run


class EffectInDoubt(RuntimeError):
    """A side effect started before a crash and its outcome is unknown: it is not run again."""

    def __init__(self, effect: str) -> None:
        super().__init__(f"side effect '{effect}' was started before and its outcome is unknown; it was not run again")
        self.effect = effect


@dataclass
class GraphOutcome:
    interrupts: list[Interrupt] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    next: tuple[str, ...] = ()  # the nodes still to run: none once the graph has ended

    @property
    def waiting(self) -> bool:
        return bool(self.interrupts)


class QuestionCaught(RuntimeError):
    """``approve()`` stopped the run for a question, and the graph caught that stop: nobody was asked."""

    def __init__(self, question: str) -> None:
        super().__init__(f"approve({quoted(first_line(question, 60), 60)!r}) was asked of nobody: the graph caught the "
                         "GraphInterrupt that stops the run until someone decides (`except Exception`?): re-raise it")


# What a card's decision resumes a plain graph's ``interrupt()`` with (``bot.approvals.resume_value``), by JSON type.
DECISION_TYPES = {"approved": "boolean", "by": "string", "at": "string", "approval_id": "string"}
JSON_TYPES = {"string": "text", "integer": "a whole number", "number": "a number", "array": "a list", "null": "None"}


class QuestionUnanswerable(RuntimeError):
    """``interrupt(..., response_schema=...)`` takes an answer no card gives: the approver's click failed the run."""

    def __init__(self, question: Any, why: str) -> None:
        shown = quoted(first_line(question if isinstance(question, str) else json.dumps(question, default=str), 40), 40)
        if tool_review.is_review(question):
            super().__init__(f"HumanInTheLoopMiddleware asked for a review no card can give: {why}. Nobody was asked")
            return
        super().__init__(f"interrupt({shown!r}, response_schema=...) takes {why}; a card's answer is a dict (approved, "
                         "by, at, approval_id), or a bool with response_schema=bool. Nobody was asked")


def _unanswerable(schema: Any) -> str | None:
    """Why no card's decision fits ``schema`` (LangGraph gives an interrupt's ``response_schema`` as JSON Schema), or
    ``None``. ``response_schema=str`` or ``Literal["approve", "reject"]`` was asked on a card, and the click that
    approved it failed the run ("ValidationError: 1 validation error for str"): the approver's decision was lost."""
    if not isinstance(schema, dict):
        return None
    kinds = schema.get("type")
    kinds = set(kinds) if isinstance(kinds, list) else {kinds} if kinds is not None else set()
    if "boolean" in kinds:
        return None  # True or False (``bot.approvals.resume_value``)
    if "enum" in schema or "const" in schema:
        return f"one of {json.dumps(schema.get('enum', [schema.get('const')]), default=str)[:60]}"
    if kinds and "object" not in kinds:
        return " or ".join(sorted(JSON_TYPES.get(str(kind), str(kind)) for kind in kinds))
    unknown = [key for key in schema.get("required", []) if key not in DECISION_TYPES]
    if unknown:
        return f"a dict with {', '.join(map(str, unknown))}"
    properties = schema.get("properties") or {}
    wrong = [key for key, kind in DECISION_TYPES.items()
             if isinstance(properties.get(key), dict) and properties[key].get("type") not in (None, kind)]
    return f"a dict whose {', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} of another type" if wrong else None


class StoppedUnasked(RuntimeError):
    """The graph stopped before its end with no question waiting (a node raised ``GraphInterrupt()`` itself): no card
    could make it go on, and it had not ended."""

    def __init__(self, nodes: tuple[str, ...]) -> None:
        super().__init__(f"the graph stopped at {', '.join(f'`{node}`' for node in nodes)} with no question to ask "
                         "(a GraphInterrupt raised without one?): call interrupt() or bot.kit.approve() to ask")


class RunTimedOut(RuntimeError):
    """A run went on longer than its graph's limit (``TIMEOUT``, else ``BATON_RUN_TIMEOUT_SECONDS``) and was stopped."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"ran longer than its limit of {kit.duration(limit)} and was stopped (TIMEOUT in the graph's "
                         "module, else BATON_RUN_TIMEOUT_SECONDS)")
        self.limit = limit


# Set while a graph runs: the asyncio tasks LangGraph (or the graph itself) starts then are the graph's.
_in_graph: contextvars.ContextVar[bool] = contextvars.ContextVar("baton_in_graph", default=False)


def _contain_exits_of_graph_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Make every task started on ``loop`` while a graph runs fail with ``NodeExited`` where it would raise
    ``SystemExit`` or ``KeyboardInterrupt``.

    asyncio re-raises those two out of the event loop from whichever task raised them, whoever awaits
    it: a ``@task`` of the functional API, a conditional edge's function, a node that is a Runnable
    rather than a function, a subgraph a node invokes itself, a task a node starts, each calling
    ``sys.exit()``, stopped ``baton run``. The registry's wrapping of node functions reaches none of
    these; the tasks they run in are where they can all be caught. A task started outside a graph
    (Baton's own) is left as it is, so a real stop still stops Baton.
    """
    previous = loop.get_task_factory()
    if getattr(previous, "baton_contains_exits", False):
        return

    def create(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **options: Any) -> asyncio.Future[Any]:
        # ``options``: ``context`` (3.11), and from 3.13 whatever ``create_task`` was given (``name``, ...)
        context: contextvars.Context | None = options.get("context")
        inside = context.get(_in_graph, False) if context is not None else _in_graph.get()
        started = _exits_failed(coro) if inside else coro
        task = previous(loop, started, **options) if previous is not None else asyncio.Task(started, loop=loop, **options)
        if inside:  # a task cancelled before its first step never awaited ``coro``: no "never awaited" warning
            task.add_done_callback(lambda _task: coro.close())
        return task

    create.baton_contains_exits = True  # type: ignore[attr-defined]
    loop.set_task_factory(create)  # type: ignore[arg-type]


_END = object()


def _progress_line(chunk: Any) -> str | None:
    """What a custom stream chunk shows in the thread: ``progress()``'s line, or text a node wrote itself with
    LangGraph's own ``get_stream_writer()`` (``runtime.stream_writer``, a LangChain tool's ``ToolRuntime``), as
    LangGraph's docs show it (``writer("Looking up data for city: Paris")``), which was dropped without a word.
    Other chunks (a dict of a graph's own) are not shown."""
    if isinstance(chunk, dict) and chunk.get("baton") == kit.PROGRESS_MARK:
        return str(chunk.get("text", ""))
    return chunk if isinstance(chunk, str) and chunk.strip() else None


async def _next_chunk(stream: AsyncIterator[tuple[Any, Any]]) -> Any:
    """The graph's next custom chunk, or ``_END``. A ``BaseException`` other than cancellation and
    ``GeneratorExit`` (``sys.exit()`` in a step LangGraph ran in this task, a library's own) fails the run:
    past here Baton's drain would take it for Baton stopping, and run the graph again."""
    try:
        _namespace, chunk = await anext(stream)
    except StopAsyncIteration:
        return _END
    except (Exception, asyncio.CancelledError, GeneratorExit):
        raise  # the graph's failure; Baton stopping; this coroutine closed
    except BaseException as exc:
        raise NodeExited.of(exc) from None
    return chunk


async def _exits_failed(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return await coro
    except (SystemExit, KeyboardInterrupt) as exc:
        raise NodeExited.of(exc) from None


def _values(values: Any) -> dict[str, Any]:
    """A graph's state; what a functional API ``@entrypoint`` returned that is no dict is its reply (``return
    "Restarted web."`` failed the run, its work done, on "dictionary update sequence element #0 has length 1")."""
    if isinstance(values, dict):
        return _error_as_text(_message_as_text(dict(values)))
    return {} if values is None else _message_as_text({"reply": values})


def _message_as_text(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` whose ``reply``, when it is a chat model's message (``{"reply": await kit.chat(...)}``), is its
    text: it was shown as Python shows the object ("content='Hi there' additional_kwargs={} response_metadata={}
    tool_calls=[] ...")."""
    if isinstance(values.get("reply"), BaseMessage):
        values["reply"] = str(values["reply"].text)
    elif "reply" not in values and values.get("structured_response") is not None:
        # LangChain's create_agent(..., response_format=Schema): its answer is the schema's object, its last AI
        # message a tool call with no text (the reply was "Done.") or, from a provider's native output, the JSON
        values["reply"] = _as_data(values["structured_response"])
    elif "reply" not in values and isinstance(values.get("messages"), list) and values["messages"] and isinstance(
            values["messages"][-1], AIMessage):  # a graph on messages alone (LangChain's create_agent): its answer
        values["reply"] = str(values["messages"][-1].text)
    return values


def _as_data(value: Any) -> Any:
    """A structured answer (a pydantic model, a dataclass, a dict) as data the reply shows as JSON."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


# The ids of the questions the running run's checkpoints stored (its tasks' INTERRUPT writes, subgraphs' too): an
# ``approve()`` whose question is among none of them was caught by the graph, even beside another branch's card.
_stored_questions: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("baton_stored_questions",
                                                                                     default=None)


def checkpointed(value: Any) -> Any:
    """What a checkpoint stores of a value a graph wrote, an ``interrupt()``'s question too: ``storable_value``.
    Stored as it was, a lone surrogate became "?" (msgpack), and a NUL stayed on SQLite and failed the run on
    PostgreSQL (jsonb): a reply or a card read "a\\x00b?c"."""
    if isinstance(value, Interrupt):
        shown = storable_value(value.value)
        return value if shown is value.value else Interrupt(shown, value.id, response_schema=value.response_schema)
    if type(value) in (list, tuple) and any(isinstance(item, Interrupt) for item in value):  # LangGraph's INTERRUPT
        if (stored := _stored_questions.get()) is not None:
            stored.update(item.id for item in value if isinstance(item, Interrupt))
        return type(value)(map(checkpointed, value))
    return storable_value(value)


def _error_as_text(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` whose ``error``, when set to something other than text (``{"code": 3, "why": ...}``), is text:
    the run's record keeps its error as text, and storing a dict there failed, so the thread read "Something
    went wrong while handling this" instead of the graph's error. ``True`` stays: "the run failed", no more."""
    error = values.get("error")
    if error and not isinstance(error, (str, bool)):
        values["error"] = (json.dumps(error, ensure_ascii=False, default=str) if isinstance(error, (dict, list, tuple))
                           else str(error))
    return values


class GraphRuntime:
    def __init__(self, registry: GraphRegistry, checkpointer: BaseCheckpointSaver,
                 run_timeout: float | None = None) -> None:
        self.registry = registry
        self.checkpointer = checkpointer
        self.run_timeout = run_timeout  # a graph's own TIMEOUT wins; None: no limit
        self._compiled: dict[str, tuple[GraphSpec, Pregel]] = {}
        # Baton's checkpointers (storage.checkpointer) store what a graph writes as ``checkpointed`` makes it; any
        # other's values are made so when read (``state``).
        self._storing = hasattr(checkpointer, "storable")
        if self._storing:
            checkpointer.storable = checkpointed  # type: ignore[attr-defined]

    def compiled(self, spec: GraphSpec) -> Pregel:
        # Keyed by the spec too: a graph added again under its name (``GraphRegistry.add``) ran as it was first.
        cached = self._compiled.get(spec.name)
        if cached is None or cached[0] is not spec:
            compiled = spec.compile(self.checkpointer)
            if compiled.store is None:  # get_store() and runtime.store say what to do, not "'NoneType' ... 'put'"
                compiled = compiled.copy(update={"store": NO_STORE})
            cached = self._compiled[spec.name] = (spec, compiled)
        return cached[1]

    @staticmethod
    def config_for(lg_thread_id: str, graph: str) -> dict[str, Any]:
        # One LangGraph thread per (chat thread, graph): different graphs never share state channels.
        return {"configurable": {"thread_id": f"{lg_thread_id}:{graph}"}}

    async def run(
        self, spec: GraphSpec, lg_thread_id: str, payload: dict[str, Any] | Command | None,
        context: kit.RunContext, on_progress: ProgressSink, run_id: int | None = None,
        fence: CheckpointFence | None = None,
    ) -> GraphOutcome:
        """Run (``payload`` a dict), resume (a ``Command``) or continue (``None``) until done or interrupted.

        ``run_id`` (Baton's run) goes into the metadata of every checkpoint the run writes (``started``).
        ``fence``: what each checkpoint write of the run confirms first (the run's thread still held).
        """
        graph = self.compiled(spec)
        config = self.config_for(lg_thread_id, spec.name)
        if run_id is not None:
            config["metadata"] = {RUN_METADATA: run_id}
        limit = self.run_timeout if spec.timeout == "default" else spec.timeout
        run_context = graph_context.context_for(spec.graph, context.request)  # every start and resume: not kept
        _contain_exits_of_graph_tasks(asyncio.get_running_loop())
        token, inside, fenced = kit.bind(context), _in_graph.set(True), checkpoint_fence.set(fence)
        stored = _stored_questions.set(set())
        counter = model_usage.UsageCounter(context.record_usage)  # the graph's own models' spend too
        counted = model_usage.counting(counter)
        deadline = asyncio.timeout(limit)
        questions = kit.asked(context)
        questions.clear()
        try:
            # subgraphs=True: progress() in a subgraph's node reaches the thread too
            async with deadline, aclosing(graph.astream(payload, config, stream_mode="custom", subgraphs=True,
                                                        durability="sync", context=run_context)) as stream:
                while (chunk := await _next_chunk(stream)) is not _END:
                    line = _progress_line(chunk)
                    if line is not None:
                        # Storable: a file name's lone surrogate (os.listdir), a NUL of a command's output stored by
                        # no database, and the line's message, tried again for ever, held up the run's reply behind it.
                        # Baton's own: what it raises passes as it is.
                        await on_progress(storable(line))
        except TimeoutError:
            if limit is not None and deadline.expired():
                raise RunTimedOut(limit) from None
            raise  # the graph's own (a node's deadline)
        finally:
            model_usage.stop(counted)
            checkpoint_fence.reset(fenced)
            stored_ids = _stored_questions.get() or set()
            _stored_questions.reset(stored)
            _in_graph.reset(inside)
            kit.unbind(token)
            await counter.written()
        outcome = await self.state(spec, lg_thread_id)
        # It ran on as if someone had decided: the whole run, or one branch beside another's card. A question that
        # LangGraph stored and keeps for later (``@task``s started together are asked one after another) was not
        # caught; with a checkpointer not Baton's, whose writes are not seen here, only a run with none waiting is.
        if self._storing:
            waiting = stored_ids | {asked.id for asked in outcome.interrupts}
            caught = [summary for summary, asked_id in questions if asked_id not in waiting]
        else:
            caught = [] if outcome.waiting else [summary for summary, _ in questions]
        if caught:
            raise QuestionCaught(caught[0])
        if not outcome.waiting and outcome.next:  # reported "Done." though nothing after the stop ran
            raise StoppedUnasked(outcome.next)
        for asked in outcome.interrupts:
            why = tool_review.unanswerable(asked.value, asked.response_schema) if tool_review.is_review(
                asked.value) else _unanswerable(asked.response_schema)
            if why is not None:
                raise QuestionUnanswerable(asked.value, why)
        return outcome

    async def refuse_waiting_checkpoints(self) -> None:
        """Runs cancelled past Baton's stop grace: their checkpoint writes still waiting for a connection
        fail at once instead of holding the stop (``storage.checkpointer.fail_waiting_calls``)."""
        await fail_waiting_calls(self.checkpointer)

    async def started(self, spec: GraphSpec, lg_thread_id: str, run_id: int) -> bool:
        """Whether run ``run_id`` has written a checkpoint yet (its graph's thread may hold earlier runs')."""
        latest = await self.checkpointer.aget_tuple(self.config_for(lg_thread_id, spec.name))
        return latest is not None and (latest.metadata or {}).get(RUN_METADATA) == run_id

    async def state(self, spec: GraphSpec, lg_thread_id: str) -> GraphOutcome:
        snapshot = await self.compiled(spec).aget_state(self.config_for(lg_thread_id, spec.name))
        # What each question shows on its card and the reply, as a database stores them: an ``interrupt()`` or
        # ``approve()`` whose text held a NUL (a command's output) failed storing its approval on PostgreSQL, and the
        # thread read "Something went wrong while handling this". Baton's checkpointers hold them so already.
        if self._storing:
            return GraphOutcome(interrupts=list(snapshot.interrupts), values=_values(snapshot.values),
                                next=tuple(snapshot.next))
        interrupts = [checkpointed(asked) for asked in snapshot.interrupts]
        return GraphOutcome(interrupts=interrupts, values=_values(storable_value(snapshot.values)),
                            next=tuple(snapshot.next))

    async def keep_latest(self, lg_thread_id: str, graph: str) -> None:
        """Delete the checkpoints of the graph's earlier runs in the chat thread but its latest (what a new run
        goes on from): a thread never left alone for ``BATON_CHECKPOINT_RETENTION_HOURS`` (a DM, one thread for
        good on Discord) kept every checkpoint of every run. Graphs with a ``DeltaChannel`` keep theirs."""
        try:
            await self.checkpointer.aprune([f"{lg_thread_id}:{graph}"], strategy="keep_latest")
        except NotImplementedError:
            pass

    async def forget(self, lg_thread_id: str, graphs: Iterable[str] | None = None) -> None:
        """Delete the checkpoints ``graphs`` wrote in the chat thread (default: every installed graph's).

        Each graph has a LangGraph thread of its own there (``config_for``): a graph uninstalled since it ran
        is no installed one, so its checkpoints stay unless it is named.
        """
        for name in sorted(set(self.registry.names() if graphs is None else graphs)):
            await self.checkpointer.adelete_thread(f"{lg_thread_id}:{name}")


HistoryProvider = Callable[[Location, int], Awaitable[list[dict[str, Any]] | None]]


@dataclass
class Services:
    """What every run's context shares: the database, config, graphs, the model and chat history."""

    db: Database
    config: BatonConfig
    registry: GraphRegistry
    model: BaseChatModel | None = None
    model_name: str | None = None
    model_deadline: float = 180.0
    histories: dict[str, HistoryProvider] = field(default_factory=dict)
    redactor: Redactor | None = None  # Baton's secrets, kept from what graphs send to the model too
    approval_expiry: float = 0.0  # BATON_APPROVAL_EXPIRY_SECONDS (0: cards wait for good), shown by ``status``
    retention_days: int = 0  # BATON_RETENTION_DAYS (0: kept for good): a digest reaching further back says so

    @functools.cached_property
    def model_key(self) -> str | None:
        """The configured model's ``provider:model`` as LangChain names it in its callbacks (``bot.model_usage``)."""
        return model_key(self.model) if self.model is not None else None


class RunServices:
    """The ``kit.RunContext`` of one run."""

    def __init__(self, services: Services, request: kit.Request, run_id: int | None, workspace: str = "",
                 correlation_id: str = "") -> None:
        self._services = services
        self._correlation = correlation_id  # the run's request's: its effects are audited under it
        self._db = services.db
        self._registry = services.registry
        self._run_id = run_id
        self._workspace = workspace
        self.config = services.config
        self.model = services.model
        self.model_deadline = services.model_deadline
        self.request = request
        self.redact: Callable[[str], str] | None = services.redactor.text if services.redactor else None
        self._settled: list[tuple[str, dict[str, Any]]] = []  # effects' names and outcomes not written yet (session)
        self._writing: set[asyncio.Event] = set()  # the sessions writing outcomes now: each set once it has ended

    async def record_usage(self, reply: Any, model: str | None = None) -> None:
        input_tokens, output_tokens = usage_of(reply)
        if self._run_id is None or not (input_tokens or output_tokens):
            return
        cost = cost_of(self.price_of(model), input_tokens, output_tokens)
        # Not ``self.session()``: a graph's own model call's tokens are written by a task of their own
        # (``bot.model_usage``) beside the run's writes, and both wrote the effects' outcomes it carries.
        async with self._db.session() as session:
            await session.exec(update(Run).where(Run.id == self._run_id).values(  # type: ignore[arg-type]
                tokens=func.coalesce(Run.tokens, 0) + input_tokens + output_tokens,
                cost=(func.coalesce(Run.cost, 0.0) + cost) if cost is not None else Run.cost))

    def price_of(self, model: str | None) -> Price | None:
        """The price of ``model`` (``provider:model`` as LangChain names it: ``ls_provider:ls_model_name``) in
        ``baton.yaml``; ``None``: ``BATON_MODEL``'s, as is that of the configured model when it is called as any
        other (its provider may name itself otherwise: ``python:``, Azure's ``azure``)."""
        prices = self.config.models.prices
        price = prices.get(model) if model is not None else None
        if price is None and (model is None or model == self._services.model_key):
            price = prices.get(self._services.model_name or "")
        return price

    async def history(self, scope: Literal["thread", "channel"], limit: int) -> list[dict[str, Any]]:
        location = Location(platform=self.request.platform, workspace=self._workspace, channel=self.request.channel,
                            thread=self.request.thread if scope == "thread" else "")
        provider = self._services.histories.get(self.request.platform)
        if provider is not None:
            found = await provider(location, limit)
            if found is not None:
                return found
        return await self._seen_by_baton(location, limit)

    async def _seen_by_baton(self, location: Location, limit: int) -> list[dict[str, Any]]:
        """The messages Baton itself received and sent there (for platforms that offer no history)."""
        async with self._db.read() as session:
            inbound = select(InboundEvent).where(
                InboundEvent.platform == location.platform, InboundEvent.channel == location.channel,
                InboundEvent.kind == "message")
            outbound = select(OutboxMessage).where(
                OutboxMessage.platform == location.platform, OutboxMessage.channel == location.channel,
                OutboxMessage.kind == "post")
            if location.thread:
                inbound = inbound.where(InboundEvent.thread == location.thread)
                outbound = outbound.where(OutboxMessage.thread == location.thread)
            asked = (await session.exec(inbound.order_by(InboundEvent.id.desc()).limit(limit))).all()  # type: ignore[union-attr]
            said = (await session.exec(outbound.order_by(OutboxMessage.id.desc()).limit(limit))).all()  # type: ignore[union-attr]
        merged = [(event.received_at, {"user": event.user, "text": event.text, "is_bot": False}) for event in asked]
        merged += [(row.created_at, {"user": "baton", "text": Message.model_validate(row.payload).plain_text(),
                                     "is_bot": True}) for row in said]
        return [entry for _, entry in sorted(merged, key=lambda pair: pair[0])][-limit:]

    def catalog(self) -> list[dict[str, Any]]:
        entries = [
            {"name": spec.name, "kind": "graph", "description": spec.description, "example": spec.example,
             "risk": self.config.policy_for_graph(spec.name).risk
             if spec.asks_approval or spec.name in self.config.graphs else "low"}
            for spec in self._registry if spec.name != "runbook"
        ]
        for name, runbook in self.config.runbooks.items():
            example = runbook.example or f"run {name} {runbook.usage_args()}".strip()
            entries.append({"name": name, "kind": "runbook", "description": runbook.description,
                            "example": example, "risk": runbook.risk})
        return entries

    async def channel_activity(self) -> list[dict[str, Any]]:
        # Rows are stamped on the database's clock (``Database.now``); a card stamped ahead of it (a clock set back
        # since) counts as asked now: no negative age, no time left beyond the expiry.
        now = self._db.now()
        async with self._db.read() as session:
            records = (await session.exec(
                select(ThreadRecord).where(
                    ThreadRecord.platform == self.request.platform,
                    ThreadRecord.channel == self.request.channel,
                    ThreadRecord.status.in_(("running", "waiting")),  # type: ignore[attr-defined]
                ).order_by(ThreadRecord.updated_at)  # type: ignore[arg-type]
            )).all()
            approvals = (await session.exec(
                select(Approval).where(
                    Approval.thread_record_id.in_([r.id for r in records]),  # type: ignore[attr-defined]
                    Approval.status == "pending",
                )
            )).all() if records else []
            asked = await self._asked_at(session, [r.id for r in records]) if records else {}  # type: ignore[misc]
        # Not the thread asking, busy with this very run; asked beside the thread's run (at its card), with no run
        # of its own (``Orchestrator._handle_aside``), it lists the run it asked beside.
        records = [record for record in records if record.thread != self.request.thread or self._run_id is None]
        # Each thread's cards, found once: looked for among all the channel's cards for each thread, 2,000 waiting
        # cards held the event loop (every channel's requests and clicks) 8 s, 4,000 47 s.
        cards: dict[int, list[Approval]] = {}
        for approval in approvals:
            cards.setdefault(approval.thread_record_id, []).append(approval)
        activity = []
        # The longest-waiting first: by when each was asked (the thread's last change is a click, a progress line)
        for record in sorted(records, key=lambda r: asked.get(r.id, r.updated_at)):  # type: ignore[arg-type]
            activity.append({
                "channel": record.channel,
                "thread": record.thread,
                "title": quoted(record.title or record.graph or "request", 120),
                "status": record.status,
                "status_text": "running" if record.status != "waiting" else  # a "Which one?" card is no approval
                "waiting for a choice" if record.graph == CHOOSER else "waiting for approval",
                "requested_by": record.requested_by or "someone",
                "age": age(asked.get(record.id, record.updated_at), now),  # type: ignore[arg-type]
                "approvals": [
                    {"summary": quoted(first_line(a.summary, 200), 200),
                     "approvers": waiting_for(a.approvers, a.requested_by, a.risk),
                     "age": age(min(a.created_at, now), now), "expires_in": self._expires_in(a, now)}
                    for a in cards.get(record.id, [])  # type: ignore[arg-type]
                ],
            })
        # Whom the activity names: a reply built from it ("asked by X", "waiting for Y") shows them as mentions.
        kit.people_read(self).update(
            name for record in records
            for name in [record.requested_by, *(who for a in cards.get(record.id, [])  # type: ignore[arg-type]
                                                for who in [a.requested_by, *a.approvers])] if name)
        return activity

    @staticmethod
    async def _asked_at(session: AsyncSession, record_ids: list[int]) -> dict[int, datetime]:
        """When the request each thread is busy with was asked, by thread record: its run's request message
        (a request queued behind another run waited there too), else the run's start (a choice card's pick)."""
        rows = (await session.exec(
            select(Run.thread_record_id, Run.started_at, InboundEvent.received_at, InboundEvent.kind)
            .outerjoin(InboundEvent, InboundEvent.id == Run.inbound_id)  # type: ignore[arg-type]
            .where(Run.thread_record_id.in_(record_ids),  # type: ignore[attr-defined]
                   Run.status.in_(("running", "waiting")))  # type: ignore[attr-defined]
        )).all()
        asked: dict[int, datetime] = {}
        for record_id, started, received, kind in rows:
            when = threads.asked_at(started, received, kind)
            asked[record_id] = min(when, asked.get(record_id, when))
        return asked

    def _expires_in(self, approval: Approval, now: datetime) -> str | None:
        expiry = self._services.approval_expiry
        if not expiry:
            return None
        ends = min(approval.created_at, now) + timedelta(seconds=expiry)
        return "now" if ends <= now else age(now, ends)  # past: its expiry check comes within ~30 s ("0ms" before)

    async def run_effect_once(self, key: str, name: str, fn: Callable[[], Awaitable[T]]) -> T:
        # Durable: the effect must not run before this is on disk. The earlier effects' outcomes are
        # written first, so a node that runs again within this run finds its effect done.
        async with self.session() as session:
            fresh = await insert_ignore(session, Effect, {"key": key, "name": name, "run_id": self._run_id,
                                                          "status": "started", "started_at": self._db.now()}, ["key"])
            if not fresh:
                existing = (await session.exec(select(Effect).where(Effect.key == key))).one()
            if fresh or existing.status == "started":  # run now, or not run again: its outcome is unknown
                await self._audit(session, "effect.started" if fresh else "effect.in_doubt", name)
        if not fresh:
            if existing.status == "done":
                return existing.result  # type: ignore[no-any-return]
            if existing.status == "failed":
                raise RuntimeError(f"side effect '{name}' failed before ({existing.result}); it is not run again")
            raise EffectInDoubt(name)
        try:
            result = await fn()
        except asyncio.CancelledError:
            raise  # cut off (Baton stopping): how far it got is unknown, so it stays "started", in doubt
        except BaseException as exc:
            self._settle(key, name, "failed", {"error": f"{type(exc).__name__}: {exc}"})
            raise
        self._settle(key, name, "done", result)
        return result

    def _settle(self, key: str, name: str, status: str, result: Any) -> None:
        self._settled.append((name, {"effect_key": key, "status": status, "result": result, "now": self._db.now()}))

    async def _audit(self, session: Transaction, kind: str, effect: str, **detail: Any) -> None:
        request = self.request
        await audit.record(session, kind, self._correlation, platform=request.platform, channel=request.channel,
                           thread=request.thread, user=request.user, run_id=self._run_id, effect=effect, **detail)

    @asynccontextmanager
    async def session(self, *, durable: bool = True) -> AsyncIterator[Transaction]:
        """A write transaction of this run, which also records the outcomes of its effects finished since
        its last one.

        An effect's outcome rides on the run's next write (its next effect, progress message,
        approval card or result, at the latest the checkpoint of its step: ``LeasedRunServices.confirm``)
        instead of a transaction of its own. Only a node that runs again reads it, and a node runs again
        only when LangGraph has not stored its result yet: after a crash before that, the effect reads
        as started and is not run again, as it would after a crash between the effect and a write of
        its own. An outcome whose transaction failed stays pending (``flush_effects``).
        """
        # Taken at the start: another session of the run begun meanwhile (a parallel branch's checkpoint, its
        # progress line) writes the outcomes settled since, not these a second time (two 'effect.done').
        settled, self._settled[:] = self._settled[:], []
        ended = asyncio.Event() if settled else None
        if ended is not None:
            self._writing.add(ended)
        try:
            async with self._db.session(durable=durable) as session:
                for name, params in settled:
                    await session.exec(_FINISH_EFFECT, params=params)  # type: ignore[call-overload]
                    failed = params["result"]["error"][:500] if params["status"] == "failed" else None
                    await self._audit(session, f"effect.{params['status']}", name, error=failed)
                yield session
        except BaseException:
            self._settled[:0] = settled  # not written: the run's next write, or ``flush_effects``, writes them
            raise
        finally:
            if ended is not None:
                self._writing.discard(ended)
                ended.set()

    def outcomes_unwritten(self) -> bool:
        """Whether effects of this run ended and their outcomes are not written yet (or are being written now)."""
        return bool(self._settled or self._writing)

    async def write_outcomes(self) -> None:
        """Until the outcomes of the effects that ended so far are written: in a transaction of their own, or by
        the session writing them now (``LeasedRunServices.confirm``, before a checkpoint)."""
        while self._settled or self._writing:
            if self._settled:
                # Not durable: committed, it outlives a killed Baton, and the run's next durable write (at the
                # latest its end) syncs it with its own. A power cut in between leaves the effect "started", never
                # run twice; waiting for the disk here cost every request with a side effect one more sync.
                async with self.session(durable=False):
                    pass
            else:
                await next(iter(self._writing)).wait()

    async def flush_effects(self) -> None:
        """Record the outcomes still pending, in a transaction of their own: after the run's last write
        (a run with none to come, or whose last one failed, e.g. fenced off by a lost lease). The
        effects happened, whoever answers the thread."""
        if self._settled:
            async with self.session(durable=False):
                pass
