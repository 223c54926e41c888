"""``baton.yaml``, the settings and the ``baton`` command line as a demanding operator uses them: each
mistake is one clear message naming the line or the setting, never a traceback, never a password."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.config import ConfigError, load_config
from bot.settings import Settings
from tests.support import run_cli


def baton_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, env={**os.environ, **env})


@pytest.mark.parametrize(("text", "expected"), [
    # A control character: "unknown line", and PyYAML's own two lines with the character's offset.
    ("approvers: [alice]\nrunbooks:\n  up:\n    description: up\x07time\n    command: [uptime]\n",
     "baton.yaml: line 4: not valid YAML: the character U+0007 is not allowed"),
    # Said only "line 2: not valid YAML: second occurrence" (of what, and where was the first?).
    ("approvers: &ops [alice]\nrunbooks: &ops {}\n",
     "line 2: not valid YAML: found duplicate anchor 'ops'; first occurrence on line 1, second occurrence here"),
    ("approvers: [alice]\n---\napprovers: [bob]\n",
     "line 2: not valid YAML: expected a single document in the stream on line 1, but found another document here"),
    # The program with its arguments in one part: accepted, then "could not start" at every run.
    ("runbooks:\n  disk:\n    description: x\n    command: [\"df -h /\"]\n",
     "line 4: runbooks.disk: Value error, the program to run is 'df -h /', spaces and all: each argument is a part "
     "of its own, without spaces around it ([\"df\", \"-h\", \"/\"])"),
    ("runbooks:\n  up:\n    description: x\n    command: [' uptime']\n", "the program to run is ' uptime', spaces"),
])
def test_a_config_mistake_is_named_with_its_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "baton.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)  # one line


def test_a_program_whose_path_holds_a_space_is_taken(tmp_path: Path) -> None:
    path = tmp_path / "baton.yaml"
    path.write_text("runbooks:\n  up:\n    description: x\n    command: ['/opt/My Tools/up', '--all']\n")
    assert load_config(path).runbooks["up"].argv({}) == ["/opt/My Tools/up", "--all"]


def test_a_config_that_only_begins_its_document_is_empty(tmp_path: Path) -> None:
    """A file with only comments was an empty configuration, but with YAML's '---' above them it was refused:
    "the top level must be a mapping"."""
    path = tmp_path / "baton.yaml"
    path.write_text("---\n# runbooks come later\n")
    assert load_config(path).runbooks == {}


@pytest.mark.parametrize("adapters", [",", " ", " , "])
def test_an_adapter_list_without_names_is_as_unset(adapters: str) -> None:
    """It started Baton with no adapter at all ("Baton is starting with: "), serving nobody."""
    assert Settings(_env_file=None, BATON_ADAPTERS=adapters).enabled_adapters() is None  # type: ignore[call-arg]
    assert Settings(_env_file=None, BATON_ADAPTERS=" playground, ").enabled_adapters() == {"playground"}  # type: ignore[call-arg]


@pytest.mark.parametrize(("env", "expected"), [
    # Path("") is ".": "Baton cannot start: . is not valid: .: cannot be read: Is a directory".
    ({"BATON_CONFIG": ""}, "BATON_CONFIG: is empty: name the file, or unset it"),
    # Without its scheme the playground refused every request, saying to set BATON_PUBLIC_URL.
    ({"BATON_PUBLIC_URL": "baton.example.com"}, "BATON_PUBLIC_URL: must be an http:// or https:// address"),
    ({"BATON_PUBLIC_URL": "http://[baton"}, "BATON_PUBLIC_URL: must be an http:// or https:// address"),
])
def test_an_unusable_setting_is_named(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    result = baton_cli("graphs", cwd=tmp_path, env=env)
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_public_url_with_its_scheme_is_taken() -> None:
    settings = Settings(_env_file=None, BATON_PUBLIC_URL="https://baton.example.com:8443/")  # type: ignore[call-arg]
    assert settings.base_url == "https://baton.example.com:8443"
    with pytest.raises(ValidationError):
        Settings(_env_file=None, BATON_PUBLIC_URL="localhost:8000")  # type: ignore[call-arg]
