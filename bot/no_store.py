"""The long-term store a graph gets when it brings none: every use says so.

LangGraph's docs keep memories across threads in a store (``get_store()``, ``runtime.store``, a LangChain
tool's ``ToolRuntime.store``), which the caller compiles in (``builder.compile(store=...)``). Baton gave
none, so a node's ``get_store().put(...)`` failed its run on "'NoneType' object has no attribute 'put'".
This store is false, as no store is (the docs' ``if runtime.store:`` still skips it), and any read or
write fails the run saying what to do. A graph compiled with a store of its own keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from langgraph.store.base import BaseStore, Op, Result


class NoStoreError(RuntimeError):
    """A graph used the long-term store, and Baton gives none."""

    def __init__(self) -> None:
        super().__init__("Baton gives graphs no long-term store (get_store(), runtime.store): compile the graph "
                         "with one of its own (`graph = builder.compile(store=...)`; LangGraph's InMemoryStore is "
                         "lost when Baton stops), or keep what a run needs in the graph's state")


class NoStore(BaseStore):
    """A store that is none: false, and each operation fails with ``NoStoreError``."""

    def __bool__(self) -> Literal[False]:
        return False

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        raise NoStoreError()

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        raise NoStoreError()

    def __repr__(self) -> str:
        return "NoStore()"


NO_STORE: Any = NoStore()
