"""What a graph's own chat models spend: every LangChain chat-model call made inside a run counts on the run.

``bot.kit.chat`` and ``kit.structured`` record their replies themselves. A graph with a model of its own
(LangChain's ``create_agent(model, tools)``, a node calling ``init_chat_model(...)`` or ``ChatOpenAI`` itself)
reaches no kit, so its tokens and cost were recorded nowhere. LangChain tells its callbacks of every chat-model
call: ``UsageCounter``, set for the run by ``counting``, is added by LangChain's configure hook to each callback
manager LangChain configures while the run goes on, and every chat-model call configures its own, wherever it is
(a node, a subgraph, a tool, ``create_agent``'s model node, a sync node's thread) and whatever callbacks it was
given. Added as not inheritable, it is not handed down to the graph's nodes (LangGraph passes them its manager's
children): a graph that calls no model meets it on its own start and end alone, skipped inline (``ignore_chain``),
where a handler in the run's config was called on every node's events.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult
from langchain_core.tracers.context import register_configure_hook

from bot.models import named, usage_of

log = logging.getLogger(__name__)

KIT_CALL = "baton.kit"  # the tag of ``bot.kit``'s own model calls, whose replies the kit records itself

Record = Callable[[Any, str], Awaitable[None]]  # (a reply, its model's provider:model) -> added to the run


class UsageCounter(BaseCallbackHandler):
    """Adds each chat-model call's reported usage to the run, priced by its model's ``provider:model`` (LangChain's
    ``ls_provider`` and ``ls_model_name``, as ``BATON_MODEL`` writes it). A call that failed or was cancelled
    counts what the provider reported of it, if anything (a stream cut off after its usage came)."""

    run_inline = True  # called where the event happens: no task per event, no worker thread for a sync handler
    # Every other kind of event (a node's, each chain's) skipped at once.
    ignore_chain = ignore_agent = ignore_retriever = ignore_retry = ignore_custom_event = True

    def __init__(self, record: Record) -> None:
        self._record = record
        self._loop = asyncio.get_running_loop()
        self._calls: dict[UUID, tuple[str, bool]] = {}  # a started call's run id -> (provider:model, the kit's)
        self._writes: list[concurrent.futures.Future[None]] = []

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[Any]], *, run_id: UUID,
                            tags: list[str] | None = None, metadata: dict[str, Any] | None = None,
                            **kwargs: Any) -> None:
        self._calls[run_id] = (named(metadata or {}), KIT_CALL in (tags or ()))

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._calls.pop(run_id, None)
        if call is not None and not call[1]:  # the kit records its own replies
            self._add(response, call[0])

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._calls.pop(run_id, None)
        response = kwargs.get("response")
        if call is not None and isinstance(response, LLMResult):  # the kit's too: it records no failed call
            self._add(response, call[0])

    def _add(self, response: LLMResult, model: str) -> None:
        for generations in response.generations:
            for generation in generations:
                message = getattr(generation, "message", None)
                if any(usage_of(message)):
                    # Written by the run's event loop, from a sync node's thread too; awaited when the run ends.
                    self._writes.append(asyncio.run_coroutine_threadsafe(self._record(message, model), self._loop))

    async def written(self) -> None:
        """Wait for the usage counted so far to be written; a write that failed is logged (the run goes on)."""
        if self._calls:  # calls cut off with the run: LangChain tells of them from a task of its own (shielded)
            await asyncio.sleep(0)
        awaited = 0  # the list only grows (a sync node's thread appends to it): read by position
        while awaited < len(self._writes):
            writes = self._writes[awaited:]
            awaited += len(writes)
            for outcome in await asyncio.gather(*map(asyncio.wrap_future, writes), return_exceptions=True):
                if isinstance(outcome, BaseException):
                    log.warning("a model call's tokens could not be recorded on its run: %s: %s",
                                type(outcome).__name__, outcome)


_counter: contextvars.ContextVar[UsageCounter | None] = contextvars.ContextVar("baton_model_usage", default=None)
register_configure_hook(_counter, inheritable=False)  # each chat model's call configures a manager of its own


def counting(counter: UsageCounter) -> contextvars.Token[UsageCounter | None]:
    """Count the chat-model calls made from here on in this context (a run's), until ``stop``."""
    return _counter.set(counter)


def stop(token: contextvars.Token[UsageCounter | None]) -> None:
    _counter.reset(token)
