"""Where a SQLite Baton keeps LangGraph's checkpoints."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import closing
from functools import partial
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy.exc
from sqlalchemy import update
from sqlmodel import select

from bot.app import Baton
from bot.messages import InboundClick, InboundMessage
from bot.settings import Settings
from storage.checkpointer import checkpoint_fence, open_checkpointer, sqlite_checkpoint_path
from storage.models import Approval, ThreadRecord, utcnow
from tests.support import runs_in


@pytest.mark.asyncio
async def test_checkpoints_get_a_file_of_their_own_beside_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'baton.db'}"
    assert sqlite_checkpoint_path(url) == tmp_path / "baton.checkpoints.db"
    async with open_checkpointer(url) as checkpointer:
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        assert await checkpointer.aget_tuple(config) is None
    assert (tmp_path / "baton.checkpoints.db").exists()
    assert not (tmp_path / "baton.db").exists()  # the checkpointer never touched Baton's own file


def test_a_database_that_already_holds_checkpoints_keeps_them(tmp_path: Path) -> None:
    database = tmp_path / "baton.db"
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("CREATE TABLE checkpoints (thread_id TEXT)")
        connection.execute("INSERT INTO checkpoints VALUES ('a run waiting for approval')")
    assert sqlite_checkpoint_path(f"sqlite:///{database}") == database

    empty = tmp_path / "fresh.db"
    with closing(sqlite3.connect(empty)) as connection, connection:
        connection.execute("CREATE TABLE checkpoints (thread_id TEXT)")
    assert sqlite_checkpoint_path(f"sqlite:///{empty}") == tmp_path / "fresh.checkpoints.db"


async def test_replicas_starting_together_on_a_new_postgresql_database_all_get_a_checkpointer(postgres_url: str) -> None:
    """LangGraph's setup creates its tables unguarded: two replicas starting together collided on them
    (a unique violation: one replica did not start)."""

    async def start() -> str:
        async with open_checkpointer(postgres_url) as saver:
            return type(saver).__name__

    started = await asyncio.wait_for(asyncio.gather(*(start() for _ in range(4)), return_exceptions=True), 60)
    assert started == ["FencedPostgresSaver"] * 4


async def until(condition: Callable[[], Awaitable[object]], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_pruning_a_finished_thread_never_deletes_the_checkpoints_of_a_follow_up_run(
        database_url: str, config_path: Path, counter: Path) -> None:
    """The pruning picked finished threads, then deleted their checkpoints without holding the thread: a
    follow-up that started a run in between lost that run's checkpoints, and its approval turned stale."""
    settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path, BATON_CHECKPOINT_RETENTION_HOURS=1)
    async with Baton(settings) as baton:
        thread, pending_approval = partial(_thread, baton), partial(_pending_approval, baton)
        await _finished_two_hours_ago(baton)

        forget = baton.runtime.forget
        drain_owner = baton.orchestrator.leases.owner  # type: ignore[union-attr]

        async def forget_after_a_follow_up(lg_thread_id: str, graphs: Iterable[str] | None = None) -> None:
            """The pruning has picked the thread; before it deletes anything, a follow-up comes."""
            baton.runtime.forget = forget  # type: ignore[method-assign]
            await baton.accept_message(InboundMessage(**WHERE, event_id="e2", user="alice", text="run restart service=web",
                                                      addressed=True))
            # Its run gets as far as its approval (and checkpoints it), unless the thread is held against it.
            await until(lambda: _is(thread(), lambda record: record.status == "waiting"
                                    or record.lease_owner not in (None, drain_owner)), "the follow-up to start or wait")
            await forget(lg_thread_id, graphs)

        baton.runtime.forget = forget_after_a_follow_up  # type: ignore[method-assign]
        await baton.prune_checkpoints()

        await until(pending_approval, "the follow-up's approval card")
        await _the_follow_up_goes_on(baton, counter)
        assert (await thread()).lease_owner is None


async def test_a_pruning_stalled_past_its_lease_deletes_nothing_of_the_run_that_took_the_thread_meanwhile(
        database_url: str, config_path: Path, counter: Path) -> None:
    """The pruning holds the thread while it deletes its checkpoints, but never looked at that hold again: a replica
    stalled past it (SIGSTOP, a frozen VM) while a follow-up took the thread and started a run deleted, once going
    again, that run's checkpoints, and its approval card turned stale."""
    settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path, BATON_CHECKPOINT_RETENTION_HOURS=1)
    async with Baton(settings) as baton:
        thread, pending_approval = partial(_thread, baton), partial(_pending_approval, baton)
        await _finished_two_hours_ago(baton)

        forget = baton.runtime.forget

        async def forget_after_a_stall(lg_thread_id: str, graphs: Iterable[str] | None = None) -> None:
            """The pruning holds the thread; it stalls before deleting anything, past its lease."""
            baton.runtime.forget = forget  # type: ignore[method-assign]
            assert (await thread()).lease_owner == f"{baton.instance} (pruning)"
            async with baton.db.session() as session:  # the lease runs out while the pruning's replica stands still
                await session.exec(update(ThreadRecord).values(lease_until=baton.db.now() - timedelta(seconds=1)))
            await baton.accept_message(InboundMessage(**WHERE, event_id="e2", user="alice", text="run restart service=web",
                                                      addressed=True))
            await until(pending_approval, "the follow-up's approval card")
            await forget(lg_thread_id, graphs)  # going again

        baton.runtime.forget = forget_after_a_stall  # type: ignore[method-assign]
        pruned = await baton.prune_checkpoints()

        record = await _the_follow_up_goes_on(baton, counter)
        assert pruned == 0 and record.pruned_at is None  # what is there now is the follow-up's, to be pruned once it is finished


WHERE = {"platform": "playground", "channel": "general", "thread": "1"}


async def _thread(baton: Baton) -> ThreadRecord:
    async with baton.db.read() as session:
        return (await session.exec(select(ThreadRecord).execution_options(populate_existing=True))).one()


async def _pending_approval(baton: Baton) -> Approval | None:
    async with baton.db.read() as session:
        return (await session.exec(select(Approval).where(Approval.status == "pending"))).first()


async def _finished_two_hours_ago(baton: Baton) -> None:
    """``run uptime`` in ``WHERE``, finished, its thread last changed 2 hours ago (past a 1-hour retention)."""
    await baton.accept_message(InboundMessage(**WHERE, event_id="e1", user="alice", text="run uptime"))
    await until(lambda: _is(_thread(baton), lambda record: record.status == "done"), "the first run to finish")
    async with baton.db.session() as session:
        await session.exec(update(ThreadRecord).values(updated_at=utcnow() - timedelta(hours=2)))


async def _the_follow_up_goes_on(baton: Baton, counter: Path) -> ThreadRecord:
    """The follow-up waiting at its card kept its checkpoints: bob approves, and its command runs. The thread's record
    as it was before the click."""
    record = await _thread(baton)
    config = {"configurable": {"thread_id": f"{record.lg_thread_id}:runbook", "checkpoint_ns": ""}}
    assert await baton.runtime.checkpointer.aget_tuple(config) is not None, "the follow-up's checkpoints were deleted"
    approval = await _pending_approval(baton)
    assert approval is not None
    await baton.accept_click(InboundClick(**WHERE, event_id="c1", user="bob", approval_id=approval.id, action="approve"))
    await until(lambda: _is(_thread(baton), lambda found: found.status == "done"), "the approved run to finish")
    assert runs_in(counter) == ["uptime", "restart web"]
    return record


async def _is(value: Awaitable[ThreadRecord], test: Callable[[ThreadRecord], bool]) -> bool:
    return test(await value)


def _disk_full() -> sqlalchemy.exc.OperationalError:
    """SQLite's "database or disk is full" as Baton's database session raises it (SQLAlchemy's, wrapping it)."""
    with closing(sqlite3.connect(":memory:")) as full:
        full.execute("PRAGMA max_page_count=1")
        try:
            full.execute("CREATE TABLE t (x)")
        except sqlite3.OperationalError as exc:
            return sqlalchemy.exc.OperationalError("UPDATE thread_records ...", {}, exc)
    raise AssertionError("the database took a table without a page for it")


class FenceOnAFullDisk:
    """A run's fence after a stall (not surely held): its lease renewal, a write to Baton's database on the same
    disk as the checkpoints, meets the full disk once, then finds room."""

    def __init__(self) -> None:
        self.tries = 0

    def surely_held(self) -> bool:
        return False

    async def confirm(self) -> None:
        self.tries += 1
        if self.tries == 1:
            raise _disk_full()


@pytest.mark.asyncio
async def test_a_checkpoint_whose_lease_renewal_meets_the_full_disk_waits_for_room_too(tmp_path: Path) -> None:
    """With Baton's database and its checkpoints on one disk, the heartbeat cannot renew a lease while it is full:
    half a lease on (15 s), each try of a checkpoint waiting for room renews it first, and the first renewal that
    met the full disk failed the run, which so waited at most 15 s of the 30 s it is said to."""
    fence = FenceOnAFullDisk()
    async with open_checkpointer(f"sqlite:///{tmp_path / 'baton.db'}") as saver:
        fenced = checkpoint_fence.set(fence)
        try:
            await saver.aput_writes({"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": "1"}},
                                    [("channel", "value")], "task-1")
        finally:
            checkpoint_fence.reset(fenced)
    assert fence.tries == 2


async def test_a_checkpoint_write_waiting_for_the_database_gives_up_within_the_stated_wait(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The retries' deadline began after the first try, which itself waits out the pool's wait for a connection
    (psycopg_pool's 30 s): a try begun just before it waited the pool's 30 s again, about 60 s in all, twice the
    README's 30 s and a default lease. Scaled down here: the pool's wait 1 s, the stated wait 1 s."""
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool, PoolTimeout

    import storage.checkpointer as checkpointer
    from storage.checkpointer import FencedPostgresSaver

    monkeypatch.setattr(checkpointer, "CHECKPOINT_ROOM_WAIT_SECONDS", 1.0)
    pool = AsyncConnectionPool("host=127.0.0.1 port=1 user=postgres dbname=x connect_timeout=1", min_size=1,
                               max_size=2, open=False, timeout=1.0,
                               kwargs={"autocommit": True, "row_factory": dict_row, "prepare_threshold": 0})
    await pool.open(wait=False)  # nothing listens on port 1: every connection is refused
    try:
        saver = FencedPostgresSaver(pool)  # type: ignore[arg-type]
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": "c"}}
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(PoolTimeout):
            await saver.aput_writes(config, [("x", 1)], "task")
        assert loop.time() - began < 1.5, loop.time() - began
    finally:
        await pool.close(timeout=1)


def test_keys_a_database_cannot_store_are_told_apart_once_made_storable() -> None:
    """A NUL and a lone surrogate are both U+FFFD: two keys that differ only there became one, and a value of the
    graph's state was lost from its checkpoint without a word."""
    from bot.messages import storable_value

    assert storable_value({"a\x00": 1, "a\ud800": 2, "b": 3}) == {"a\ufffd": 1, "a\ufffd\ufffd": 2, "b": 3}
    same = {"plain": [1, "two"]}
    assert storable_value(same) is same  # nothing to change: the value itself
