"""The command line at its edges: a developer's `baton db revision` on a database a newer branch migrated, a
`BATON_MODEL` whose provider's package is not installed."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from bot.models import ModelSetupError, create_model
from storage.migrate import MIGRATIONS
from tests.support import run_cli


def baton_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, env={**os.environ, **env})


def test_db_revision_on_a_database_a_newer_baton_only_added_to_is_one_line(
        tmp_path: Path, config_path: Path, migrated_sqlite: Path) -> None:
    """A developer back on main after a branch whose migration only added to the database (``older_code_compatible``)
    ran `baton db revision "..."`: `baton run` runs on such a database, so the check passed, and Alembic's
    autogenerate then stopped on a page of traceback ending in "Can't locate revision identified by '0099'"."""
    database = tmp_path / "baton.db"
    shutil.copyfile(migrated_sqlite, database)
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("UPDATE alembic_version SET version_num = '0099'")
    versions = sorted(path.name for path in (MIGRATIONS / "versions").glob("*.py"))
    result = baton_cli("db", "revision", "add a column", cwd=tmp_path,
                       env={"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": f"sqlite:///{database}"})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "╭" not in result.stderr, result.stderr
    assert result.stderr.strip() == (
        f"Baton cannot write a migration from the database sqlite:///{database}: it is at revision 0099, which this "
        "Baton does not have (a newer Baton migrated it); point BATON_DATABASE_URL at a database this Baton made, "
        "such as a new SQLite file"), result.stderr
    assert sorted(path.name for path in (MIGRATIONS / "versions").glob("*.py")) == versions  # nothing written


@pytest.mark.parametrize("provider, package", [("groq", "langchain_groq"), ("mistralai", "langchain_mistralai")])
def test_a_model_provider_baton_has_no_extra_for_is_not_sent_to_one(
        tmp_path: Path, config_path: Path, provider: str, package: str) -> None:
    """`BATON_MODEL=groq:...` without LangChain's Groq package said to `pip install -e '.[groq]'`: Baton has no such
    extra (pip warns that it "does not provide the extra" and installs nothing), and the next start said the same.
    The package LangChain names is what to install; the extras Baton has (openai, anthropic, ollama) are still named."""
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    database = tmp_path / "baton.db"
    result = baton_cli("run", cwd=tmp_path, env={"BATON_CONFIG": str(config_path), "BATON_PORT": "0",
                                                 "BATON_MODEL": f"{provider}:some-model",
                                                 "BATON_DATABASE_URL": f"sqlite:///{database}"})
    assert result.returncode == 2, result.stderr
    assert f"BATON_MODEL={provider}:some-model needs" in result.stderr, result.stderr
    assert f"pip install langchain-{provider}" in result.stderr, result.stderr
    assert f".[{provider}]" not in result.stderr, result.stderr
    assert not database.exists()


def test_a_model_provider_baton_has_an_extra_for_is_sent_to_it() -> None:
    if importlib.util.find_spec("langchain_ollama") is not None:
        pytest.skip("langchain_ollama is installed here")
    with pytest.raises(ModelSetupError) as error:
        create_model("ollama:llama3.2", timeout=1, retries=0)
    assert "pip install -e '.[ollama]'" in str(error.value)


@pytest.mark.parametrize("command", [["threads"], ["run"], ["db", "upgrade"]])
def test_a_sqlite_url_whose_query_its_driver_cannot_read_is_a_settings_error(
        tmp_path: Path, config_path: Path, command: list[str]) -> None:
    """`BATON_DATABASE_URL=sqlite:///baton.db?timeout=30s` passed the settings' check, and every command stopped on a
    traceback ending in "ValueError: could not convert string to float: '30s'" when it first opened the database.
    It is named as the setting it is, as a PostgreSQL URL's hosts and ports that do not go together are."""
    database = tmp_path / "baton.db"
    result = baton_cli(*command, cwd=tmp_path, env={"BATON_CONFIG": str(config_path), "BATON_PORT": "0",
                                                    "BATON_DATABASE_URL": f"sqlite:///{database}?timeout=30s"})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "╭" not in result.stderr, result.stderr
    assert "  BATON_DATABASE_URL: SQLite's driver cannot read the URL's timeout= (could not convert string to float)\n" \
        in result.stderr, result.stderr
    assert "30s" not in result.stderr  # the setting's name and what is wrong, never its value
    assert not list(tmp_path.glob("baton.db*"))


def test_a_sqlite_url_asking_for_uri_filenames_is_refused_before_a_file_is_made(
        tmp_path: Path, config_path: Path, migrated_sqlite: Path) -> None:
    """`sqlite:///baton.db?mode=ro&uri=true` (a read-only look, as SQLite's URI filenames write it): the reading
    commands checked that baton.db was there, then SQLite's driver opened a file named 'baton.db?mode=ro', made it
    empty beside it, and `baton threads` said the database "holds no Baton tables". Baton names the file by its
    path; what the driver would open another way is refused as a setting."""
    database = tmp_path / "baton.db"
    shutil.copyfile(migrated_sqlite, database)
    result = baton_cli("threads", cwd=tmp_path, env={"BATON_CONFIG": str(config_path),
                                                     "BATON_DATABASE_URL": f"sqlite:///{database}?mode=ro&uri=true"})
    assert result.returncode == 2, result.stderr
    assert "  BATON_DATABASE_URL: Baton opens its SQLite file by its path, not as a URI: remove uri=" \
        in result.stderr, result.stderr
    assert sorted(path.name for path in tmp_path.glob("baton.db*")) == ["baton.db"]
