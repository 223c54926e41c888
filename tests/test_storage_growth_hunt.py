"""What Baton leaves on its disk after months: the WALs of ``baton.db`` and of its checkpoints file, the checkpoints
of a thread in use for good."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict

from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import END, START, StateGraph
from sqlmodel import select

from bot.app import Baton
from bot.messages import InboundMessage
from bot.metrics import Metrics
from bot.retention import Retention
from bot.settings import Settings
from storage.checkpointer import open_checkpointer, sqlite_checkpoint_path
from storage.db import WAL_SIZE_LIMIT, Database
from storage.models import AuditEntry, DigestRun, Run, ThreadRecord, as_utc
from tests.support import until
from tests.test_retention import DAYS, OLD, RECENT, counters, ids_of, insert, samples_of

BIG = "x" * 60_000  # a row a few pages long: the WAL grows by megabytes in a few dozen commits
GROWN = 3 * WAL_SIZE_LIMIT
RUNS = 12


def wal_size(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """A read transaction held on ``path`` (a backup, an operator's query, a long digest scan): SQLite cannot
    fold the WAL back into the file past it, so the WAL grows meanwhile."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN")
        connection.execute("SELECT count(*) FROM sqlite_master").fetchall()
        yield
        connection.execute("COMMIT")
    finally:
        connection.close()


async def test_the_wal_of_baton_db_shrinks_back_after_a_long_read(tmp_path: Path, migrated_sqlite: Path) -> None:
    path = tmp_path / "baton.db"
    shutil.copyfile(migrated_sqlite, path)
    db = Database(f"sqlite:///{path}")

    async def write() -> None:
        async with db.session(durable=False) as session:
            session.add(AuditEntry(correlation_id="c", kind="test", detail={"text": BIG}))

    try:
        await grown_past_a_read_then_cut_back(path, write)
    finally:
        await db.dispose()


async def grown_past_a_read_then_cut_back(path: Path, write: Callable[[], Awaitable[None]]) -> None:
    """``write()`` until the WAL of ``path`` has grown past a long read; then, the reader gone, until SQLite folds
    the WAL back at its next automatic checkpoint and writes it again from its start: the file is cut back to the
    limit then, instead of keeping its peak for good."""
    with reading(path):
        while wal_size(path) < GROWN:
            await write()
    grown = wal_size(path)
    for _ in range(400):
        await write()
        if wal_size(path) <= WAL_SIZE_LIMIT:
            break
    assert wal_size(path) <= WAL_SIZE_LIMIT, f"the WAL grew to {grown} bytes and stayed at {wal_size(path)}"


async def test_the_wal_of_the_checkpoints_file_shrinks_back_after_a_long_read(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'baton.db'}"
    path = sqlite_checkpoint_path(url)
    async with open_checkpointer(url) as saver:
        count = 0

        async def write() -> None:
            nonlocal count
            count += 1
            checkpoint = {**empty_checkpoint(), "id": f"{count:08d}", "channel_values": {"text": BIG}}
            await saver.aput({"configurable": {"thread_id": f"t{count}", "checkpoint_ns": ""}}, checkpoint,
                             {}, {})

        await write()  # the file and its tables made
        await grown_past_a_read_then_cut_back(path, write)


async def test_a_thread_in_use_for_good_keeps_only_its_latest_checkpoints(database_url: str, config_path: Path) -> None:
    """A thread never left alone for ``BATON_CHECKPOINT_RETENTION_HOURS`` (a Discord DM is one thread for good) is
    never pruned: it kept every checkpoint of every run, 4 more a run, for ever."""
    settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground", BATON_DEDUPE_WINDOW_SECONDS=0)  # the same request again runs
    async with Baton(settings) as baton:
        async def finished() -> int:
            async with baton.db.read() as session:
                return len((await session.exec(select(Run.id).where(Run.status == "done"))).all())

        for n in range(1, RUNS + 1):
            await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="dm",
                                                      user="alice", text="run uptime", addressed=True,
                                                      event_id=f"e{n}"))
            await until(lambda n=n: _at_least(finished(), n), f"run {n} to finish")
        async with baton.db.read() as session:
            record = (await session.exec(select(ThreadRecord))).one()
        config = {"configurable": {"thread_id": f"{record.lg_thread_id}:runbook"}}
        kept = [item async for item in baton.runtime.checkpointer.alist(config)]
        # The last run's own, and the one it went on from (and that one's parent): not 4 for each of the runs.
        assert len(kept) <= 8, f"{len(kept)} checkpoints kept after {RUNS} runs in one thread"
        assert kept[0].checkpoint["channel_values"].get("reply")  # the latest stays: a next run goes on from it


async def _at_least(count: Awaitable[int], wanted: int) -> bool:
    return await count >= wanted


def digest(key: str, fired: datetime, status: str = "posted", **values: Any) -> DigestRun:
    return DigestRun(**{"schedule_key": key, "fire_time": fired, "platform": "slack", "channel": "C1",
                        "window_start": fired - timedelta(days=1), "window_end": fired, "status": status,
                        "claimed_at": fired, "posted_at": fired if status == "posted" else None, "tokens": 100,
                        "cost": 0.5, **values})


async def test_old_digests_go_with_the_retention_and_what_they_cost_stays_counted(database: Database,
                                                                                    database_url: str) -> None:
    """``digest_runs`` was the one table of history retention left alone: a row a firing (and a ``digest now``)
    for good, summary and all."""
    daily = "config:slack:C1:0 9 * * *:UTC"
    insert(database_url, *(digest(daily, OLD + timedelta(hours=n)) for n in range(5)),
           *(digest(f"now:slack:e{n}", OLD + timedelta(hours=n), "failed") for n in range(3)),
           digest(daily, OLD - timedelta(days=1), "claimed"))  # one being built (its builder's claim taken over)
    # A channel asked only with `digest now`: its latest stays, for the next one covers the time since it.
    insert(database_url, *(digest(f"now:slack:c3-{n}", OLD + timedelta(hours=n), channel="C3") for n in range(2)))
    [recent] = insert(database_url, digest("config:slack:C2:0 9 * * *:UTC", RECENT))
    spend = ("baton_model_tokens_total", frozenset({("graph", "digest")}))
    before = counters(samples_of(await Metrics(database, "test", [], ["slack"])._shared()))
    assert before[spend] == 1200

    await Retention(database, DAYS).delete_expired()

    async with database.read() as session:
        left = (await session.exec(select(DigestRun.schedule_key, DigestRun.fire_time, DigestRun.status))).all()
    # The schedule's latest firing stays (it is when its next one is due), as does what is still being built.
    assert sorted((key, status) for key, _fired, status in left) == sorted([
        (daily, "posted"), (daily, "claimed"), ("config:slack:C2:0 9 * * *:UTC", "posted"),
        ("now:slack:c3-1", "posted")]), left
    assert max(as_utc(fired) for key, fired, status in left if key == daily and status == "posted") == \
        as_utc(OLD + timedelta(hours=4))
    assert recent in await ids_of(database, DigestRun)
    after = counters(samples_of(await Metrics(database, "test", [], ["slack"])._shared()))
    assert after == before


async def test_keep_latest_on_sqlite_keeps_the_latest_checkpoint_its_parent_and_their_writes(tmp_path: Path) -> None:
    async with open_checkpointer(f"sqlite:///{tmp_path / 'baton.db'}") as saver:
        config: Any = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        for n in range(1, 5):
            config = await saver.aput(config, {**empty_checkpoint(), "id": f"{n:08d}"}, {}, {})
            await saver.aput_writes(config, [("channel", n)], f"task{n}")
        await saver.aput({"configurable": {"thread_id": "other", "checkpoint_ns": ""}},
                         {**empty_checkpoint(), "id": "00000001"}, {}, {})
        await saver.aprune(["t"], strategy="keep_latest")

        kept = [item async for item in saver.alist({"configurable": {"thread_id": "t"}})]
        assert [item.checkpoint["id"] for item in kept] == ["00000004", "00000003"]
        assert [value for _task, _channel, value in kept[0].pending_writes or []] == [4]
        assert [value for _task, _channel, value in kept[1].pending_writes or []] == [3]
        assert await saver.aget_tuple({"configurable": {"thread_id": "other"}}) is not None  # other threads stay


class _Count(TypedDict):
    n: int


def _with_a_subgraph() -> StateGraph[Any]:
    """A graph whose node is a compiled subgraph: each call of it checkpoints in a namespace of its own
    (``call:<task id>``), a new one every run."""
    inner: StateGraph[Any] = StateGraph(_Count)
    inner.add_node("add", lambda state: {"n": state["n"] + 1})
    inner.add_edge(START, "add")
    inner.add_edge("add", END)
    outer: StateGraph[Any] = StateGraph(_Count)
    outer.add_node("call", inner.compile())
    outer.add_edge(START, "call")
    outer.add_edge("call", END)
    return outer


async def test_a_thread_in_use_for_good_keeps_no_earlier_runs_subgraph_calls(database_url: str) -> None:
    """``keep_latest`` before each run (``GraphRuntime.keep_latest``) kept, on SQLite, every earlier run's subgraph
    call (its namespace's latest checkpoint and that one's parent, with their writes): a DM whose graph calls a
    subgraph grew by 2 checkpoints a run for ever, where PostgreSQL's deletes the calls of the runs gone."""
    async with open_checkpointer(database_url) as saver:
        graph = _with_a_subgraph().compile(checkpointer=saver)
        config: Any = {"configurable": {"thread_id": "dm:graph"}}
        for n in range(RUNS):
            await saver.aprune(["dm:graph"], strategy="keep_latest")  # as before each new run in the thread
            assert (await graph.ainvoke({"n": n * 10}, config))["n"] == n * 10 + 1
        await saver.aprune(["dm:graph"], strategy="keep_latest")

        kept = [item async for item in saver.alist(config)]  # every namespace's
        namespaces = {item.config["configurable"]["checkpoint_ns"] for item in kept}
        # The latest run's end and what it went on from, and at most that run's own call.
        assert len(kept) <= 4 and len(namespaces) <= 2, \
            f"{len(kept)} checkpoints in {len(namespaces)} namespaces kept after {RUNS} runs in one thread"
        assert (await saver.aget_tuple(config)).checkpoint["channel_values"]["n"] == (RUNS - 1) * 10 + 1  # type: ignore[union-attr]
        assert (await graph.ainvoke({"n": 1000}, config))["n"] == 1001  # the next run goes on
