"""Baton's settings as a deployment meets them: a Kubernetes Service named ``baton``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bot.settings import Settings
from tests.support import run_cli


def baton_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, env={**os.environ, **env})


# What Kubernetes puts into every pod of a namespace with a Service named "baton" (enableServiceLinks, on by
# default): Docker's old link variables, one of them BATON_PORT, beside the service's own.
KUBERNETES_SERVICE_LINKS = {
    "BATON_PORT": "tcp://10.96.0.12:8000", "BATON_PORT_8000_TCP": "tcp://10.96.0.12:8000",
    "BATON_PORT_8000_TCP_ADDR": "10.96.0.12", "BATON_PORT_8000_TCP_PORT": "8000", "BATON_PORT_8000_TCP_PROTO": "tcp",
    "BATON_SERVICE_HOST": "10.96.0.12", "BATON_SERVICE_PORT": "8000", "BATON_SERVICE_PORT_HTTP": "8000",
}


def test_a_kubernetes_service_named_baton_does_not_stop_baton(tmp_path: Path, config_path: Path) -> None:
    """Every command stopped with "BATON_PORT: Input should be a valid integer" in a pod beside a Service named
    baton, though nobody had set BATON_PORT: Kubernetes had, to the Service's address."""
    result = baton_cli("graphs", cwd=tmp_path, env={"BATON_CONFIG": str(config_path), **KUBERNETES_SERVICE_LINKS})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_kubernetes_baton_port_gives_way_to_the_one_baton_is_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kubernetes' BATON_PORT is nobody's setting: .env's is read instead (the environment wins over .env for a
    setting someone set), or the default."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BATON_PORT", "tcp://10.96.0.12:8000")
    assert Settings().port == 8000
    monkeypatch.setenv("BATON_PORT", "tcp://[fd00::12]:9000")
    assert Settings().port == 8000
    (tmp_path / ".env").write_text("BATON_PORT=9001\n")
    assert Settings().port == 9001
    assert Settings(BATON_PORT=9002).port == 9002  # type: ignore[call-arg]
    monkeypatch.setenv("BATON_PORT", "9003")
    assert Settings().port == 9003
