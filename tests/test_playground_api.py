"""The playground's HTTP API under odd use: clients that go away, odd ids and odd characters."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support import BatonProcess


async def _listen_until_a_change(http: httpx.AsyncClient) -> None:
    """A page's live updates: it goes away (a closed tab) as soon as the first change arrives."""
    async with http.stream("GET", "/api/events") as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                return


@pytest.mark.asyncio
async def test_live_update_clients_going_away_never_stall_the_playground(baton: BatonProcess) -> None:
    """Clients leaving while messages were posted once broke the streams' shared lock (Python 3.11's
    ``wait_for`` on an ``asyncio.Condition``): from then on every post hung before reaching the bot."""
    noise = {"channel": "random", "user": "dave", "text": "noise"}
    async with httpx.AsyncClient(base_url=baton.url, timeout=30) as http:
        for _ in range(4):
            listeners = [asyncio.create_task(_listen_until_a_change(http)) for _ in range(30)]
            posts = await asyncio.gather(*(http.post("/api/messages", json=noise) for _ in range(30)))
            assert {response.status_code for response in posts} == {201}
            await asyncio.wait_for(asyncio.gather(*listeners), 30)  # every stream got a change and left

        asked = await asyncio.wait_for(http.post("/api/messages", json={
            "channel": "general", "user": "alice", "text": "@baton run uptime"}), 10)
    assert asked.status_code == 201 and asked.json()["delivery"] == "accepted"
    baton.client().wait_reply(asked.json()["thread_id"], "did uptime")
