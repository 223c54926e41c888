"""``storage.db.WriterQueue``: SQLite writers one at a time, the ones a platform waits for first."""

from __future__ import annotations

import asyncio

from storage.db import WriterQueue


async def _line_up(queue: WriterQueue, names: list[str], order: list[str]) -> list[asyncio.Task[None]]:
    """Writers that note their turn; ``ack-*`` ones are urgent. Returns once all are in line."""

    async def write(name: str) -> None:
        async with queue.turn(urgent=name.startswith("ack")):
            order.append(name)

    tasks = [asyncio.create_task(write(name)) for name in names]
    await asyncio.sleep(0)  # one turn of the loop: each task has run up to its place in line
    return tasks


async def test_urgent_writers_go_first_and_the_others_keep_their_order():
    queue, order = WriterQueue(), []
    async with queue.turn():  # the test holds the turn while the others line up
        tasks = await _line_up(queue, ["run-1", "run-2", "ack-1", "run-3", "ack-2"], order)
        assert order == []
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == ["ack-1", "ack-2", "run-1", "run-2", "run-3"]
    async with queue.turn():  # free again
        pass


async def test_a_cancelled_writer_leaves_the_line_without_blocking_it():
    queue, order = WriterQueue(), []
    async with queue.turn():
        tasks = await _line_up(queue, ["run-1", "ack-1", "run-2"], order)
        tasks[1].cancel()  # gives up while waiting in line
        await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert order == ["run-1", "run-2"] and tasks[1].cancelled()

    turn = queue.turn()
    await turn.__aenter__()
    tasks = await _line_up(queue, ["run-3", "run-4"], order)
    await turn.__aexit__(None, None, None)  # hands the turn to run-3, which has not resumed yet ...
    tasks[0].cancel()  # ... and is cancelled now: the turn must pass on to run-4, not be lost
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)  # a lost turn would hang here
    assert order == ["run-1", "run-2", "run-4"] and tasks[0].cancelled()
