"""Baton as an operator deploys it: its settings, its command line, its database, from the README's sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def _cli(env: dict[str, str | None], *args: str) -> Any:
    """``baton <args>`` in this process."""
    from typer.testing import CliRunner

    from bot.cli import app

    return CliRunner().invoke(app, list(args), env=env)  # type: ignore[arg-type]


def test_a_baton_yaml_that_cannot_be_looked_for_is_one_line_not_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BATON_CONFIG naming a file in a directory Baton's user may not enter (Permission denied) stopped `baton run`
    and `baton graphs` with a PermissionError traceback: looking for the file failed before it was read. A name
    too long for the file system fails the same way, as root too."""
    monkeypatch.chdir(tmp_path)
    name = "a" * 300 + ".yaml"
    result = _cli({"BATON_CONFIG": name}, "graphs")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"Baton cannot start: {name} cannot be read (BATON_CONFIG): File name too long"
