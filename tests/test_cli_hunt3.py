"""Baton's settings as a deployment meets them: a Kubernetes Service named ``baton``, a setting's name misspelt."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bot.settings import Settings
from tests.support import ROOT, BatonProcess, run_cli


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


@pytest.mark.parametrize(("where", "name", "meant"), [
    ("environment", "BATON_DATABSE_URL", "BATON_DATABASE_URL"),
    (".env", "BATON_DATABSE_URL", "BATON_DATABASE_URL"),
    ("environment", "BATON_METRIC_TOKEN", "BATON_METRICS_TOKEN"),
    (".env", "baton_loglevel", "BATON_LOG_LEVEL"),
])
def test_a_misspelt_setting_stops_baton_naming_the_one_meant(
        tmp_path: Path, config_path: Path, where: str, name: str, meant: str) -> None:
    """BATON_DATABSE_URL=postgresql://... was not read: Baton made baton.db and ran on it, a replica of its own
    beside the ones sharing PostgreSQL (BATON_METRIC_TOKEN left /metrics open, saying nothing)."""
    value = "postgresql://baton:hunter2@db.internal/baton"
    env = {"BATON_CONFIG": str(config_path)}
    if where == ".env":
        (tmp_path / ".env").write_text(f"BATON_HOST=127.0.0.1\n{name}={value}\n")
    else:
        env[name] = value
    result = baton_cli("db", "upgrade", cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stdout
    assert f"  {name} ({where}): is not one of Baton's settings: did you mean {meant}?" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.db"))


def test_variables_that_only_begin_like_a_setting_are_left_alone(tmp_path: Path, config_path: Path) -> None:
    """Other names under BATON_ (a test's, a runbook's, Kubernetes' for a Service named baton or baton-db) are not
    Baton's to refuse."""
    env = {"BATON_CONFIG": str(config_path), "BATON_DEPLOY_REGION": "eu-west-1", "BATON_TEST_SOMETHING": "1",
           **KUBERNETES_SERVICE_LINKS, **{name.replace("BATON_", "BATON_DB_"): value.replace("8000", "5432")
                                          for name, value in KUBERNETES_SERVICE_LINKS.items()}}
    assert env["BATON_DB_PORT"] == "tcp://10.96.0.12:5432"  # a Service named baton-db: nearly BATON_PORT
    result = baton_cli("graphs", cwd=tmp_path, env=env)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_baton_run_logs_as_baton_log_level_says_though_a_graph_module_set_logging_up(
        tmp_path: Path, config_path: Path) -> None:
    """A graph module calling logging.basicConfig(level=logging.WARNING) at import (to see its own warnings) made
    Baton's own basicConfig, later, do nothing: BATON_LOG_LEVEL=DEBUG or INFO was ignored, Baton's start and its
    requests were not logged any more, and what still was came without a time."""
    graphs = tmp_path / "graphs"  # `python -m bot.cli` in this directory finds this package first
    graphs.mkdir()
    (graphs / "__init__.py").write_text(f"__path__.append({str(ROOT / 'graphs')!r})  # Baton's own graphs too\n")
    (graphs / "noisy.py").write_text("import logging\n\nlogging.basicConfig(level=logging.WARNING)\n")
    baton = BatonProcess(f"sqlite:///{tmp_path / 'baton.db'}", config_path, tmp_path, env={"BATON_LOG_LEVEL": "INFO"},
                         exec_=True).start()
    try:
        started = f" INFO baton: Baton {baton.name}-{baton.port} started with adapters: playground"
        log = baton.log.read_text()
        assert started in log, log
    finally:
        baton.stop()
