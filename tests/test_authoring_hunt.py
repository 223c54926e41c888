"""A new graph author following "Writing a graph" to the letter: what went wrong for them."""

from __future__ import annotations

import pytest

from bot.registry import GraphError, GraphRegistry
from tests.test_graph_modules import GOOD_GRAPH, package  # noqa: F401


@pytest.mark.parametrize(("module", "expected"), [
    # `@baton cancel deploy-42` was answered "`cancel` stops a run that is going on: write it in that run's thread",
    # while help listed the graph with its example, `cancel deploy-42`
    ("cancel", "`cancel` is a command of Baton's own .* name the module otherwise"),
    # the names of Baton's own runs: a graph's runs under them were left out of digests and baton_runs_started_total
    # (taken for a model's routing of chatter), or shown in status as "waiting for a choice"
    ("route", "`route` is the name of Baton's own runs .* name the module otherwise"),
    ("choose", "`choose` is the name of Baton's own runs .* name the module otherwise"),
])
def test_a_graph_named_as_batons_own_command_or_runs_is_refused(package, module, expected) -> None:
    name = package({module: GOOD_GRAPH})
    with pytest.raises(GraphError, match=expected):
        GraphRegistry.discover(name)
