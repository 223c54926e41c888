"""Approvals, a second hunt: cards, who decides, and plain graphs' interrupts as a team meets them."""

from __future__ import annotations

import pytest
from sqlmodel import select

from bot.kit import approve
from bot.registry import GraphSpec
from storage.models import Approval
from tests.test_graph_authoring_hunt2 import _asking
from tests.test_graph_modules import State, _asked, _reply


async def _no_card(baton) -> None:
    async with baton.db.read() as session:
        assert (await session.exec(select(Approval))).first() is None


@pytest.mark.parametrize(("approvers", "expected"), [
    # "approvers: " on the card, and bob was told "Only  can approve this."
    ([""], "approve(): an approver is empty: remove it, or write the user id"),
    # bob, the one approver named, was told "Only bob  can approve this." and could never approve
    (["bob "], "approve(): the approver 'bob ' has spaces around it: write 'bob'"),
    (["bo\u200bb"], "approve(): the approver 'bob' holds an invisible character (U+200B)"),
])
async def test_approve_naming_an_approver_nobody_is_fails_the_run_saying_so(
        tmp_path, config_path, approvers, expected) -> None:
    """A graph's own approvers with an empty name, spaces around one or an invisible character (read from a
    file, pasted from a document) posted a card that waited a day: no click ever matched, and the approver
    named was told only someone of the same name could approve. baton.yaml refuses such names at start."""
    def ask(_state: State) -> str:
        return str(approve("Drop the cache?", approvers=approvers, risk="low").approved)

    async with _asked(tmp_path, config_path, GraphSpec(name="cache", graph=_asking(ask)), "cache") as baton:
        reply = await _reply(baton, "1")
        assert expected in reply, reply
        await _no_card(baton)
