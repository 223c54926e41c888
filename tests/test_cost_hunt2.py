"""What model calls cost: the routing call of a request answered without a run is kept too."""

from __future__ import annotations

import sqlite3

from tests.support import wait_for
from tests.test_digests_hunt2 import guess, model_env  # noqa: F401  (the fixture)


def spend(database_url: str) -> list[tuple[str, int | None]]:
    with sqlite3.connect(database_url.removeprefix("sqlite:///")) as db:
        return db.execute("SELECT graph, tokens FROM runs ORDER BY id").fetchall()


def test_a_plain_words_request_found_a_duplicate_keeps_what_routing_it_cost(start_baton, sqlite_url, model_env):
    """The model routed the same plain-words request, asked twice in a channel, to `announce` (deduped): the
    second got "already asked" and no run, so what asking the model cost was kept nowhere (digests and
    /metrics counted 110 tokens of 220; found by the cost hunt)."""
    pg = start_baton(sqlite_url, env=model_env(guess("announce", 0.95), guess("announce", 0.95))).client()
    text = "@baton please tell everyone the database is down tonight"
    pg.wait_card(pg.ask(text, channel="ops", user="alice"))
    second = pg.ask(text, channel="ops", user="bob")
    reply = pg.wait_reply(second, "")
    assert "already" in reply["text"].lower() or "same request" in reply["text"].lower(), reply["text"]
    assert wait_for(lambda: sum(tokens or 0 for _, tokens in spend(sqlite_url)) == 220 or None,
                    what="both routing calls' tokens to be kept", timeout=5)
