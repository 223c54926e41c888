"""Settings from the environment and ``.env`` (pydantic-settings)."""

from __future__ import annotations

import difflib
import io
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings.sources import DotenvType

from storage.db import check_url

DAY = 24 * 60 * 60  # seconds
_SERVICE_LINK = re.compile(r"(tcp|udp|sctp)://\S+:[0-9]+")  # what Kubernetes writes in <SERVICE>_PORT

class Settings(BaseSettings):
    """Everything Baton reads from its environment. """

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str = Field("sqlite:///baton.db", alias="BATON_DATABASE_URL")
    host: str = Field("127.0.0.1", min_length=1, alias="BATON_HOST")  # empty would listen on every interface
    port: int = Field(8000, ge=0, le=65535, alias="BATON_PORT")
    config_path: Path = Field(Path("baton.yaml"), alias="BATON_CONFIG")
    public_url: str | None = Field(None, alias="BATON_PUBLIC_URL")
    dedupe_window_seconds: int = Field(600, ge=0, le=30 * DAY, alias="BATON_DEDUPE_WINDOW_SECONDS")
    max_message_chars: int = Field(4000, ge=1, alias="BATON_MAX_MESSAGE_CHARS")
    checkpoint_retention_hours: float = Field(72.0, gt=0, le=10 * 365 * 24, allow_inf_nan=False,
                                              alias="BATON_CHECKPOINT_RETENTION_HOURS")
    run_timeout_seconds: float = Field(1800.0, gt=0, le=7 * DAY, allow_inf_nan=False,
                                       alias="BATON_RUN_TIMEOUT_SECONDS")
    lease_seconds: float = Field(30.0, gt=0, le=DAY, allow_inf_nan=False, alias="BATON_LEASE_SECONDS")
    # A card nobody decided on for this long expires (nothing runs, the thread is told); 0: never.
    approval_expiry_seconds: float = Field(DAY, ge=0, le=365 * DAY, allow_inf_nan=False,
                                           alias="BATON_APPROVAL_EXPIRY_SECONDS")
    # Finished rows (runs, approvals, effects, handled events, delivered messages, audit, playground history)
    # older than this many days are deleted (bot/retention.py); 0 keeps everything. 90: a quarter's digests
    # and audits, well past the longest dedupe window (30 days) and approval expiry.
    retention_days: int = Field(0, ge=0, le=100 * 365, alias="BATON_RETENTION_DAYS")
    max_draining_threads: int = Field(16, ge=1, le=10_000, alias="BATON_MAX_DRAINING_THREADS")
    instance_name: str | None = Field(None, alias="BATON_INSTANCE_NAME")
    adapters: str | None = Field(None, alias="BATON_ADAPTERS")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field("INFO", alias="BATON_LOG_LEVEL")
    # GET /metrics (bot/metrics.py): aggregate counts only, on the same port as everything else; a token,
    # when set, is asked for as "Authorization: Bearer <token>" (for a port the internet reaches).
    metrics: bool = Field(True, alias="BATON_METRICS")
    metrics_token: SecretStr | None = Field(None, alias="BATON_METRICS_TOKEN")
    # A chat model, "provider:model" as LangChain's init_chat_model reads it (openai:gpt-4.1-mini),
    # or "python:package.module:factory" for a model class of your own. The provider's own key
    # variable (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...) is read by its LangChain package.
    model: str | None = Field(None, alias="BATON_MODEL")
    model_timeout_seconds: float = Field(60.0, gt=0, le=DAY, allow_inf_nan=False, alias="BATON_MODEL_TIMEOUT_SECONDS")
    model_retries: int = Field(2, ge=0, le=100, alias="BATON_MODEL_RETRIES")
    # Slack (adapters/slack.py). Secrets are SecretStr: they print as '**********'.
    slack_bot_token: SecretStr | None = Field(None, alias="SLACK_BOT_TOKEN")
    slack_signing_secret: SecretStr | None = Field(None, alias="SLACK_SIGNING_SECRET")
    slack_app_token: SecretStr | None = Field(None, alias="SLACK_APP_TOKEN")
    slack_api_url: str = Field("https://slack.com/api/", alias="SLACK_API_URL")
    # Discord (adapters/discord_adapter.py). The URLs point discord.py elsewhere (tests, proxies):
    # the REST base with its version, and the gateway (default: what GET /gateway/bot names).
    discord_token: SecretStr | None = Field(None, alias="DISCORD_TOKEN")
    discord_api_url: str | None = Field(None, alias="DISCORD_API_URL")
    discord_gateway_url: str | None = Field(None, alias="DISCORD_GATEWAY_URL")
    discord_guild_id: int | None = Field(None, alias="DISCORD_GUILD_ID")  # /baton in this server only, at once

    def __init__(self, **values: Any) -> None:
        files = values.get("_env_file", self.model_config.get("env_file"))
        encoding = values.get("_env_file_encoding") or self.model_config.get("env_file_encoding")
        # before pydantic-settings reads the file (python-dotenv would warn about the line, then skip it)
        _refuse_unreadable_lines(files, encoding)
        _refuse_misspelt_names(files, encoding)
        if not {"port", "BATON_PORT"} & set(values) and _service_link_port():
            values["BATON_PORT"] = _read(files, encoding, "BATON_PORT") or type(self).model_fields["port"].default
        super().__init__(**values)

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_capitals(cls, level: object) -> object:
        return level.strip().upper() if isinstance(level, str) else level

    @field_validator("host")
    @classmethod
    def _address_without_brackets(cls, host: str) -> str:
        """``[::1]`` as a URL writes it: binding to it failed ("Name or service not known")."""
        return host[1:-1] if host.startswith("[") and host.endswith("]") and len(host) > 2 else host

    @field_validator("database_url")
    @classmethod
    def _usable_database(cls, url: str) -> str:
        check_url(url)
        return url

    @field_validator("config_path", mode="before")
    @classmethod
    def _names_a_file(cls, path: object) -> object:
        if isinstance(path, str) and not path.strip():  # Path("") is ".", the directory: "cannot be read"
            raise ValueError("is empty: name the file, or unset it to use baton.yaml")
        return os.path.expanduser(path) if isinstance(path, str) else path  # no shell expands a .env's ~

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, token: object) -> object:
        """``BATON_METRICS_TOKEN=`` (a .env line left empty) leaves /metrics open, as unset does; a token of
        spaces only is refused: it would be sent and compared as typed, and is surely a mistake."""
        if isinstance(token, str) and not token:
            return None
        if isinstance(token, str) and not token.strip():
            raise ValueError("is only spaces: set a token, or leave it empty for none")
        return cls._trimmed(token)

    @field_validator("slack_bot_token", "slack_signing_secret", "slack_app_token", "discord_token", mode="before")
    @classmethod
    def _trimmed(cls, secret: object) -> object:
        """A secret read from a file or a Kubernetes secret ends in a line break, which no platform's token or
        signing secret holds: kept, every Slack signature and every scrape's token was refused for good."""
        return secret.strip() if isinstance(secret, str) else secret

    @field_validator("public_url")
    @classmethod
    def _web_address(cls, url: str | None) -> str | None:
        """Without its scheme (baton.example.com) it matched no Host header: the playground refused every
        request, saying to set BATON_PUBLIC_URL, and its links led nowhere."""
        try:
            parts = urlsplit(url or "")
            usable = not url or (parts.scheme in ("http", "https") and bool(parts.hostname))
        except ValueError:  # "http://[x"
            usable = False
        if not usable:
            raise ValueError("must be an http:// or https:// address, like https://baton.example.com")
        return url

    @property
    def config_named(self) -> bool:
        """Whether ``BATON_CONFIG`` was set (then its file must exist), rather than the default ``baton.yaml``."""
        return "config_path" in self.model_fields_set

    @property
    def base_url(self) -> str:
        """Where people reach this Baton (used for links in the playground)."""
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address: http://[::1]:8000
        return (self.public_url or f"http://{host}:{self.port}").rstrip("/")

    def enabled_adapters(self) -> set[str] | None:
        """Adapter names to start, or ``None`` for "every adapter that is configured"."""
        names = {name.strip() for name in (self.adapters or "").split(",") if name.strip()}
        return names or None  # " " or ",": no name, as unset (it started Baton with no adapter at all)


# The variables that hold Baton's own secrets (the platforms' tokens, the database URL): never handed
# to a command Baton runs (``bot.kit.command_environment``). Derived from the fields, not a setting.
SECRET_VARIABLES = frozenset({"BATON_DATABASE_URL"} | {
    str(field.alias) for field in Settings.model_fields.values()
    if field.annotation is SecretStr or SecretStr in getattr(field.annotation, "__args__", ())})


# The model providers' keys, as LangChain's provider packages (and LangSmith's tracing) read them: Baton's to call
# its model, wherever they were set, so never handed to a command unless its runbook names them (``env:``).
MODEL_KEY_VARIABLES = frozenset({
    "OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY",
    "MISTRAL_API_KEY", "COHERE_API_KEY", "CO_API_KEY", "GROQ_API_KEY", "FIREWORKS_API_KEY", "TOGETHER_API_KEY",
    "DEEPSEEK_API_KEY", "XAI_API_KEY", "PPLX_API_KEY", "PERPLEXITY_API_KEY", "NVIDIA_API_KEY", "UPSTAGE_API_KEY",
    "OPENROUTER_API_KEY", "BASETEN_API_KEY", "LLAMA_API_KEY", "WATSONX_APIKEY", "AZURE_INFERENCE_CREDENTIAL",
    "HUGGINGFACEHUB_API_TOKEN", "HF_TOKEN", "LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGSMITH_GATEWAY_API_KEY",
})

_exported: frozenset[str] = frozenset()


def exported_variables() -> frozenset[str]:
    """The variables ``export_env_file`` put into the environment (they were not there before): Baton's, read
    from ``.env``, so kept from the commands it runs (``bot.kit.command_environment``). A new set each time the
    file is exported again: whoever caches what depends on it may compare it by identity."""
    return _exported


def export_env_file(settings: Settings) -> None:
    """Put the ``.env`` lines that are not Baton's own settings into the environment (a model provider's key:
    LangChain's provider packages read only the environment, so ``OPENAI_API_KEY`` in ``.env`` stopped the
    start). What the environment sets already wins, as it does for Baton's settings; what was put there is
    remembered (``exported_variables``)."""
    global _exported
    own = {str(field.alias) for field in Settings.model_fields.values()}
    exported = set(_exported)
    for path in _env_files(settings.model_config.get("env_file")):
        for variable, value in dotenv_values(path, encoding=settings.model_config.get("env_file_encoding")).items():
            if variable not in own and value is not None and variable not in os.environ:
                os.environ[variable] = value
                exported.add(variable)
    _exported = frozenset(exported)


def _env_files(files: DotenvType | None) -> list[Path]:
    """The ``.env`` files that are there to read (none, or a pipe, is read once, by pydantic-settings)."""
    named = [files] if isinstance(files, (str, os.PathLike)) else files or ()
    return [path for path in (Path(name).expanduser() for name in named) if path.is_file()]


def _refuse_unreadable_lines(files: DotenvType | None, encoding: str | None) -> None:
    """Refuse a ``.env`` line python-dotenv cannot parse (``SLACK_BOT_TOKEN: xoxb-...``, an unclosed quote):
    it skips such a line with a warning, and the setting silently kept its default. The file and the
    line's number are named, never its text: it may hold a secret."""
    for path in _env_files(files):
        text = path.read_text(encoding=encoding or "utf-8")
        unread = [str(binding.original.line) for binding in parse_stream(io.StringIO(text)) if binding.error]
        if unread:
            raise ValidationError.from_exception_data("Settings", [{
                "type": PydanticCustomError("env_file_line", "line{s} {lines} cannot be read as NAME=value",
                                            {"s": "s" if len(unread) > 1 else "", "lines": ", ".join(unread)}),
                "loc": (str(path),), "input": str(path)}])


def _service_link_port() -> bool:
    """Whether the environment's ``BATON_PORT`` is Kubernetes': ``tcp://10.96.0.12:8000`` in every pod of a
    namespace that has a Service named baton (Docker's old link variables), the Service's address, not a port for
    Baton (every command stopped on it). A ``BATON_PORT`` the pod's own ``env`` sets wins over Kubernetes' one, so
    this one is nobody's setting: ``.env``'s is read instead, or the default."""
    return any(name.upper() == "BATON_PORT" and _SERVICE_LINK.fullmatch(value.strip())
               for name, value in os.environ.items())


def _read(files: DotenvType | None, encoding: str | None, variable: str) -> str | None:
    """``variable`` as the ``.env`` files set it (the last one that does: as pydantic-settings reads them)."""
    found = None
    for path in _env_files(files):
        for name, value in dotenv_values(path, encoding=encoding or "utf-8").items():
            if name.upper() == variable and value is not None:
                found = value
    return found


# How close a name under BATON_ must be to a setting's to be taken as that setting misspelt (difflib's ratio): the
# database URL's name with two letters swapped is 0.97, the port's with an S added 0.95, a Service's <NAME>_SERVICE_PORT
# for a Service named baton 0.71. (Misspelt and Kubernetes' names are written here as patterns, not as names: a tool
# that lists the settings the code reads would take them for settings.)
MISSPELT_RATIO = 0.85
# The other variables Kubernetes sets for a Service (<NAME>_SERVICE_HOST, <NAME>_PORT_5432_TCP_ADDR...)
_SERVICE_VARIABLE = re.compile(
    r".+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_[0-9]+_(TCP|UDP|SCTP)(_ADDR|_PORT|_PROTO)?)")


def _refuse_misspelt_names(files: DotenvType | None, encoding: str | None) -> None:
    """Refuse a name under ``BATON_`` that is not a setting but nearly one (``BATON_DATABSE_URL``): it was not
    read, and the setting it was meant for kept its default (Baton made baton.db and ran on it, beside the replicas
    sharing PostgreSQL). Other names under ``BATON_`` are left alone: a runbook's, and those Kubernetes sets for a
    Service (``<NAME>_PORT=tcp://...``: for one named baton-db, nearly BATON_PORT). The name and where it is are
    named, never its value."""
    settings = sorted(str(field.alias) for field in Settings.model_fields.values())
    places: list[tuple[str, dict[str, str | None]]] = [
        ("environment", {name: value for name, value in os.environ.items() if name not in _exported})]
    places += [(str(path), dotenv_values(path, encoding=encoding or "utf-8")) for path in _env_files(files)]
    misspelt: list[InitErrorDetails] = []
    for where, variables in places:
        for name, value in variables.items():
            upper = name.upper()
            if (not upper.startswith("BATON_") or upper in settings or _SERVICE_VARIABLE.fullmatch(upper)
                    or _SERVICE_LINK.fullmatch((value or "").strip())):
                continue
            close = difflib.get_close_matches(upper, settings, n=1, cutoff=MISSPELT_RATIO)
            if close:
                misspelt.append({"type": PydanticCustomError("misspelt_setting", "is not one of Baton's settings: "
                                                             "did you mean {meant}?", {"meant": close[0]}),
                                 "loc": (f"{name} ({where})",), "input": name})
    if misspelt:
        raise ValidationError.from_exception_data("Settings", misspelt)
