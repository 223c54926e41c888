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
    # "line 5: runbooks.up.timeout: ..." (the part that is wrong), or a rule across the file in its own words
    assert re.fullmatch(r"\S+baton\.yaml: line \d+: (\S+: )?[a-zA-Z'].*", said, re.S), said


async def test_a_digest_time_zone_in_any_case_is_kept_by_its_iana_name(sqlite_url: str) -> None:
    """The README: "A time zone may be written in any case (`utc`, `europe/paris`); it is kept by its IANA name."
    Chat did; a baton.yaml digest kept it as written, so `digest list` and its cards read '(europe/paris)'."""
    from datetime import UTC, datetime

    from sqlmodel import select, update

    from bot.config import BatonConfig, Digest
    from storage.models import DigestSchedule
    from tests.test_digests import Clock, digest_service

    assert "`utc`, `europe/paris`); it is kept by its IANA name" in " ".join(README.split())
    written = Digest(platform="playground", channel="ops", cron="0 9 * * *", timezone="europe/paris")
    assert written.timezone == "Europe/Paris"
    assert Digest(platform="playground", channel="ops", cron="0 9 * * *", timezone="utc").timezone == "UTC"
    async with digest_service(sqlite_url, Clock(datetime(2026, 6, 1, 7, 5, tzinfo=UTC)),
                              BatonConfig(digests=[written])) as digests:
        (schedule,) = await digests.enabled()
        assert schedule.timezone == "Europe/Paris"
        assert schedule.key.endswith(":0 9 * * *:europe/paris")  # the key earlier Batons made: the same schedule
        async with digests.db.session() as session:  # the row as an earlier Baton stored it
            await session.exec(update(DigestSchedule).values(timezone="europe/paris"))  # type: ignore[call-overload]
        await digests.sync_config()
        async with digests.db.read() as session:
            rows = (await session.exec(select(DigestSchedule))).all()
    assert [(row.key, row.timezone, row.enabled) for row in rows] == [(schedule.key, "Europe/Paris", True)]
