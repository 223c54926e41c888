"""The README's and .env.example's concrete claims that a newcomer copies, checked against the code.

Fast: no `baton run`, no database. What the README shows happening in chat was walked by hand against a
running Baton; what is guarded here is what drifts silently when a setting, a default or an example changes.
"""

from __future__ import annotations

import re
import sys
import uuid
from pathlib import Path

import pytest

from bot.config import load_config
from bot.registry import GraphRegistry
from bot.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
ENV_EXAMPLE = (ROOT / ".env.example").read_text(encoding="utf-8")
SETTINGS = {str(field.alias): field for field in Settings.model_fields.values()}
# Lines of .env.example that are not Baton's own settings: a provider's key, handed on to its library.
PROVIDER_KEYS = {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"}


def _env_example_names() -> dict[str, list[str]]:
    """Each NAME of a `NAME=value` line of .env.example (commented out or not), with the values written."""
    names: dict[str, list[str]] = {}
    for line in ENV_EXAMPLE.splitlines():
        match = re.match(r"^#? ?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            names.setdefault(match.group(1), []).append(match.group(2))
    return names


def test_every_variable_of_env_example_is_a_setting_and_every_setting_is_in_it() -> None:
    names = set(_env_example_names())
    assert names - set(SETTINGS) - PROVIDER_KEYS == set()
    assert set(SETTINGS) - names == set()


def test_the_values_env_example_sets_are_the_defaults() -> None:
    """`.env.example` copied to `.env` as it is changes nothing: its uncommented lines hold the defaults."""
    for line in ENV_EXAMPLE.splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            name, value = match.groups()
            read = Settings.model_validate({name: value}).model_dump(by_alias=True)[name]
            assert read == SETTINGS[name].default, name


def _configuration_table() -> list[tuple[list[str], str]]:
    section = README.split("## Configuration", 1)[1].split("\n#", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`BATON_"):
            rows.append((re.findall(r"`([A-Z_]+)`", cells[0]), cells[1]))
    return rows


def test_the_readme_configuration_table_names_settings_with_their_defaults() -> None:
    rows = _configuration_table()
    assert len(rows) >= 15
    for names, default in rows:
        values = re.findall(r"`([^`]*)`", default)
        for index, name in enumerate(names):
            assert name in SETTINGS, name
            derived = any("BATON_" in value for value in values)  # `http://BATON_HOST:BATON_PORT`
            if values and len(values) == len(names) and not derived:  # `(auto)` and `(none)` are words
                read = Settings.model_validate({name: values[index]}).model_dump(by_alias=True)[name]
                assert read == SETTINGS[name].default, name


def test_the_readme_graph_example_is_a_graph_as_described(tmp_path: Path) -> None:
    """`graphs/rollback.py` exactly as "Writing a graph" shows it: found, described, marked as asking."""
    code = re.search(r"```python\n(# graphs/rollback\.py\n.*?)```", README, re.S)
    assert code, "the README's rollback example is gone"
    package = f"graphs_readme_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "rollback.py").write_text(code.group(1))
    sys.path.insert(0, str(tmp_path))
    try:
        spec = GraphRegistry.discover(package).get("rollback")
    finally:
        sys.path.remove(str(tmp_path))
        for module in [m for m in sys.modules if m == package or m.startswith(f"{package}.")]:
            del sys.modules[module]
    assert spec is not None
    assert spec.description == "Roll a service back to its previous release."
    assert spec.example == "rollback web"
    assert spec.asks_approval is True


def test_help_points_plain_words_to_the_runbook_as_the_readme_quotes() -> None:
    """`@baton restart the web service please` with the shipped baton.yaml: the README quotes the pointer."""
    from graphs.help import _named_in

    config = load_config(ROOT / "baton.yaml", required=True)
    catalog = [{"name": name, "kind": "runbook", "example": runbook.example or f"run {name} {runbook.usage_args()}"}
               for name, runbook in config.runbooks.items()]
    named = _named_in("restart the web service please", catalog)
    assert named == ["run restart service=web"]
    assert f"Did you mean `{named[0]}`?" in README


@pytest.mark.parametrize("command", ["run", "graphs", "threads", "approvals", "audit", "db upgrade", "db revision"])
def test_every_command_of_the_readme_command_line_exists(command: str) -> None:
    from typer.main import get_command

    from bot.cli import app

    block = README.split("## The command line", 1)[1].split("```", 2)[1]
    assert f"baton {command}" in block
    group = get_command(app)
    for word in command.split():
        group = group.commands[word]  # type: ignore[attr-defined]
    assert group is not None
