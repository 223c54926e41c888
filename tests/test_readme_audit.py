"""What the README quotes of Baton's answers to a mistake, checked against what Baton says (README audit)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _refusal(tmp_path: Path, text: str) -> str:
    path = tmp_path / "baton.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    return str(error.value)


def test_a_missing_working_directory_is_refused_as_the_readme_quotes_it(tmp_path: Path) -> None:
    """The README quotes `runbooks.deploy.cwd: the directory /srv/ops does not exist`; Baton said
    `runbooks.deploy.cwd: Value error, the directory /srv/ops does not exist` (pydantic's prefix)."""
    quoted = re.search(r"\(`(runbooks\.deploy\.cwd: the directory\s+(/\S+) does not exist)`\)", README)
    assert quoted, "the README no longer quotes the cwd refusal"
    if Path(quoted.group(2)).exists():
        pytest.skip(f"{quoted.group(2)} exists on this machine")
    said = _refusal(tmp_path, f"runbooks:\n  deploy:\n    description: Deploy.\n    command: [./deploy.sh]\n"
                              f"    cwd: {quoted.group(2)}\n")
    assert said == f"{tmp_path / 'baton.yaml'}: line 5: {' '.join(quoted.group(1).split())}"


@pytest.mark.parametrize("text", [
    "approvers: alice, bob\n",
    "runbooks:\n  up:\n    description: x\n    command: [uptime]\n    timeout: 5m\n",
    "runbooks:\n  up:\n    description: x\n    command: [echo, {service}]\n",
    "runbooks:\n  up:\n    description: x\n    command: [echo]\n    env: [SLACK_BOT_TOKEN]\n",
    "runbooks:\n  up:\n    description: x\n    command: [echo, '{v}']\n    example: run up v=b\n"
    "    args:\n      v: {pattern: '^a$'}\n",
], ids=["approvers-not-a-list", "timeout-5m", "placeholder-unquoted", "own-secret-in-env", "example-refused"])
def test_a_config_refusal_is_baton_s_words_without_pydantic_s_prefix(tmp_path: Path, text: str) -> None:
    """Each line names the line, the place and the mistake, as the settings' refusals do: pydantic's
    "Value error, " before Baton's own words is noise to whoever edits baton.yaml."""
    said = _refusal(tmp_path, text)
    assert "Value error" not in said
    assert re.fullmatch(r"\S+baton\.yaml: line \d+: \S+: [a-zA-Z'].*", said, re.S), said
