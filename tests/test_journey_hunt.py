"""A coordinator's day through chat requests and the command line: typos, `run help`, telling approvals apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import BatonConfig, load_config
from bot.kit import Request
from bot.registry import GraphRegistry
from bot.routing import RouteError, route
from tests.support import ROOT

CONFIG: BatonConfig = load_config(ROOT / "baton.yaml")
REGISTRY = GraphRegistry.discover()
REQUEST = Request(platform="playground", channel="general", thread="1", user="alice", text="")


def refusal(text: str) -> str:
    with pytest.raises(RouteError) as error:
        route(REQUEST, text, REGISTRY, CONFIG)
    return str(error.value)


@pytest.mark.parametrize(("text", "meant"), [("run restrat service=web", "restart"), ("run Uptme", "uptime"),
                                             ("run dsik", "disk")])
def test_a_misspelt_runbook_gets_a_did_you_mean(text: str, meant: str) -> None:
    """"I don't know a runbook called `restrat`" listed every runbook, leaving the reader to spot the typo."""
    said = refusal(text)
    assert said.startswith("I don't know a runbook called") and f"Did you mean `{meant}`?" in said, said
    assert "Did you mean" not in refusal("run deploy")  # nothing close: no guess


@pytest.mark.parametrize("key", ["Service", "sevice", "SERVICE"])
def test_a_misspelt_argument_name_gets_a_did_you_mean(key: str) -> None:
    """`Run Restart Service=web` said "unknown argument `Service`; missing argument `service`" and nothing more."""
    said = refusal(f"run restart {key}=web")
    assert f"unknown argument `{key}`" in said and f"Did you mean `service=` for `{key}=`?" in said, said
    assert said.endswith("Nothing was run.")
    assert "Did you mean" not in refusal("run restart color=red service=web")


@pytest.mark.parametrize("text", ["run", "run help", "RUN HELP", "run ?"])
def test_run_alone_or_run_help_says_how_each_runbook_is_asked_for(text: str) -> None:
    """`run help` was "I don't know a runbook called `help`", and `run` alone named the runbooks without their
    arguments: which ones `restart` takes, and that it needs approval, was nowhere."""
    said = refusal(text)
    assert said.startswith("Which runbook?"), said
    assert "• `run restart service=<one of web, api, worker>` — Restart a service. (needs approval)" in said
    assert "• `run uptime` — How long the host has been up, and its load." in said
