"""An invalid ``baton.yaml`` is refused naming the line where the wrong key or value is.

Each case marks that line with ``#<`` (taken out before the file is written). Each was named a line
or more away: the runbook's or the digest's first line instead of the part that is wrong, the first
place the quoted text happened to appear (a description that mentions the same placeholder, another
runbook's command), the line below an unclosed quote or bracket, the alias instead of the value, or
line 1 for a key YAML reads as a number or a boolean.
"""

from __future__ import annotations

import os
import re
import pytest

from bot.config import ConfigError, load_config
from tests.support import run_cli

CASES = {
    # a whole-runbook check names the command part that is wrong
    "placeholder also in the description": """
runbooks:
  restart:
    description: Restart {service}
    command: [systemctl, restart, '{service}'] #<
""",
    "long command part": """
runbooks:
  up:
    description: x
    command:
      - echo
      - '""" + "a" * 90 + """ {n:d}' #<
    args:
      n: {pattern: '^[0-9]+$'}
""",
    "empty program": """
runbooks:
  up:
    description: x
    command:
      - '' #<
      - a
""",
    # an argument's default that does not fit its pattern
    "default equal to the description": """
runbooks:
  up:
    description: x
    command: [echo, '{env}']
    args:
      env:
        description: web
        pattern: '^(api|worker)$'
        default: web #<
""",
    "long default": """
runbooks:
  up:
    description: x
    command: [echo, '{env}']
    args:
      env:
        pattern: '^(api|worker)$'
        default: """ + "w" * 90 + """ #<
""",
    "default with a quote": """
runbooks:
  up:
    description: x
    command: [echo, '{env}']
    args:
      env:
        pattern: '^(api|worker)$'
        default: "it's" #<
""",
    # names: of a high-risk runbook nobody may approve, of a runbook, of an argument
    "high-risk runbook named in an earlier command": """
runbooks:
  web:
    description: x
    command: [systemctl, restart, web]
  restart: #<
    description: Restart
    command: [systemctl, restart, web]
    risk: high
""",
    "high-risk runbook named like a graph policy above": """
graphs:
  deploy:
    approvers: [alice]
runbooks:
  deploy: #<
    description: Deploy
    command: [deploy]
    risk: high
""",
    "runbook name also an approver": """
approvers: [Bad]
runbooks:
  ok:
    description: Bad
    command: [a]
  Bad: #<
    description: x
    command: [a]
""",
    "argument name also a description": """
runbooks:
  up:
    description: a b
    command: [a]
    args:
      ok: {pattern: x, description: a b}
      a b: {pattern: x} #<
""",
    "runbook named on": """
runbooks:
  up:
    description: x
    command: [a]
  on: #<
    description: x
    command: [a]
""",
    "argument named yes": """
runbooks:
  up:
    description: x
    command: [a]
    args:
      yes: {pattern: x} #<
""",
    "runbook named true after one named on": """
runbooks:
  on:
    description: x
    command: [a]
  true: #<
    description: x
    command: [a]
""",
    # a value on the line below its key
    "command given as one text": """
runbooks:
  up:
    description: x
    command:
      uptime #<
""",
    "risk given as a list": """
runbooks:
  up:
    description: x
    command: [a]
    risk:
      - high #<
""",
    # values that aliases and merges bring
    "value of an alias": """
approvers: &ops [alice, 1.5] #<
runbooks:
  up:
    description: x
    command: [a]
    approvers: *ops
""",
    "value of a merge": """
graphs:
  deploy: &policy
    risk: medium #<
runbooks:
  up:
    <<: *policy
    description: x
    command: [a]
""",
    # digests: the time zone, the cron
    "time zone equal to the workspace": """
digests:
  - platform: playground
    workspace: Mars/Base
    channel: ops
    cron: '0 9 * * *'
    timezone: Mars/Base #<
""",
    "unknown time zone beside a channel named UTC": """
digests:
  - platform: playground
    channel: UTC
    cron: '0 9 * * *'
    timezone: Utc/Nowhere #<
""",
    "long cron": """
digests:
  - platform: playground
    channel: ops
    cron: '0 9 * * """ + "mon," * 20 + """fry' #<
""",
    # the top level, after comments
    "a list at the top": """
# my config

- alice #<
""",
    # YAML that cannot be read
    "unclosed bracket": """
approvers: [alice #<
""",
    "key without its colon": """
runbooks:
  up:
    description x #<
    command: [a]
""",
    "unclosed quote": """
runbooks:
  up:
    description: 'x #<
    command: [a]
""",
}


def marked(text: str) -> tuple[str, int]:
    """The file's text without its ``#<`` mark, and the number of the line that had it."""
    lines = text.lstrip("\n").splitlines()
    wrong = next(number for number, line in enumerate(lines, 1) if line.endswith("#<"))
    return "\n".join(re.sub(r" ?#<$", "", line) for line in lines) + "\n", wrong


@pytest.mark.parametrize("case", CASES)
def test_invalid_config_names_the_wrong_line(tmp_path, case):
    text, wrong = marked(CASES[case])
    path = tmp_path / "baton.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    named = [int(line) for line in re.findall(rf"^{re.escape(str(path))}: line (\d+):", str(error.value), re.M)]
    assert named and set(named) == {wrong}, str(error.value)  # every problem it finds is on that line


def test_baton_run_names_the_wrong_line(tmp_path):
    text, wrong = marked(CASES["placeholder also in the description"])
    (tmp_path / "baton.yaml").write_text(text)
    result = run_cli("run", cwd=tmp_path, env={**os.environ, "BATON_CONFIG": str(tmp_path / "baton.yaml"),
                                               "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"})
    assert result.returncode == 2, result.stderr
    assert f"baton.yaml: line {wrong}: runbooks.restart: command uses {{service}}" in result.stderr
    assert not (tmp_path / "b.db").exists()
