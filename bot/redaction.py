"""Secrets never reach a chat message or a log line: their values are replaced wherever they turn up.

Baton never writes a secret on purpose, but text it does not control may hold one: a runbook's
output (``printenv``), a graph's exception, a library's error message. Every message Baton posts
passes ``Redactor.message`` (``bot.outbox``), and every log line ``Redactor.install_in_logging``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote

from pydantic import SecretStr
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bot.messages import CUT_MARK, Message
from bot.settings import Settings

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 8  # shorter values ("1", "true") would blot out ordinary words
# Variables whose values are secrets by their name (OPENAI_API_KEY, GITHUB_TOKEN, PGPASSWORD, ...).
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
# The password of a URL's user (``scheme://user:password@host``), as written in it (percent-encoded).
URL_PASSWORD = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:]*:([^\s/?#@]+)@")


class Redactor:
    """Replaces each of ``secrets`` (longest first, so that no part of a longer one is left) with ``[redacted]``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        kept = {secret.strip() for secret in secrets if len(secret.strip()) >= MIN_SECRET_CHARS}
        self._secrets = sorted({written for secret in kept for written in _as_json_writes(secret)}, key=len,
                               reverse=True)

    @classmethod
    def for_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> Redactor:
        """Baton's own secrets (the platforms' tokens, the database password) and the environment's
        variables named as secrets (a model provider's key)."""
        environ = os.environ if environ is None else environ
        values = [field.get_secret_value() for field in settings.__dict__.values() if isinstance(field, SecretStr)]
        values += [value for name, value in environ.items() if SECRET_NAME.search(name)]
        # Whatever a variable is named: the password in an application's DATABASE_URL, a REDIS_URL, a proxy's
        # HTTPS_PROXY (a runbook's environment has them; printenv posted them), and Baton's own as its URL writes it.
        values += url_passwords(settings.database_url, *environ.values())
        try:
            url = make_url(settings.database_url)
        except ArgumentError:
            url = None
        if url is not None:  # before the host, or as ?password= (libpq takes it there too)
            given = url.query.get("password") or ()
            values += [str(password) for password in (url.password, *([given] if isinstance(given, str) else given))
                       if password]
        return cls(values)

    def text(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if self._secrets and len(text) >= MIN_SECRET_CHARS:
            text = "\n".join(self._cut_secrets(line) for line in text.split("\n"))
        return text

    def _cut_secrets(self, line: str) -> str:
        """``line`` without what a cut left of a secret. Output kept up to a limit, or an error shown up to
        a length, is cut wherever the limit falls, at times inside a secret: its first (or last)
        ``MIN_SECRET_CHARS`` characters or more, ending (or starting) the line, or followed by the ``CUT_MARK``
        a cut leaves on the line, are no less secret."""
        for secret in self._secrets:
            if len(line) < MIN_SECRET_CHARS:
                break
            line = _without_suffix_cut_from(secret, _without_prefix_cut_from(secret, line))
        return line

    def message(self, message: Message) -> Message:
        """``message`` with every secret in its texts replaced (the same object when it holds none)."""
        if not self._secrets:
            return message
        dumped = message.model_dump()
        redacted = _redacted(dumped, self)
        return message if redacted == dumped else Message.model_validate(redacted)

    def install_in_logging(self) -> None:
        """Redact every record reaching a handler configured so far (the root's, uvicorn's)."""
        if not self._secrets:
            return
        loggers = [logging.getLogger()] + [logger for logger in logging.Logger.manager.loggerDict.values()
                                           if isinstance(logger, logging.Logger)]
        for handler in {handler for logger in loggers for handler in logger.handlers}:
            if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
                handler.addFilter(RedactingFilter(self))


def _as_json_writes(secret: str) -> set[str]:
    """``secret`` as written, and as JSON writes it in a string (a command printing JSON: ``docker inspect``,
    ``terraform output -json``): its ``"``, ``\\`` and control characters escaped, the rest beyond ASCII as it is
    or as ``\\u00e9`` (Python's ``json.dumps``), and ``&``, ``<``, ``>`` as ``\\u0026``... too (Go's)."""
    escaped = json.dumps(secret)[1:-1]
    go = escaped.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    return {secret, escaped, json.dumps(secret, ensure_ascii=False)[1:-1], go}


def url_passwords(*texts: str) -> list[str]:
    """The passwords of the URLs in ``texts``, each as written and as it reads (``pa%40ss`` and ``pa@ss``)."""
    found = [match.group(1) for text in texts for match in URL_PASSWORD.finditer(text)]
    return found + [unquote(password) for password in found]


def _without_prefix_cut_from(secret: str, line: str) -> str:
    """``line`` with a start of ``secret`` that ends it, or that a cut marked with ``CUT_MARK`` ends, replaced."""
    at = line.find(secret[:MIN_SECRET_CHARS])
    while at != -1:
        kept, mark, _ = line[at:at + len(secret) + len(CUT_MARK)].partition(CUT_MARK)
        if secret.startswith(kept) and (mark or at + len(kept) == len(line)):
            line = line[:at] + REDACTED + line[at + len(kept):]
        at = line.find(secret[:MIN_SECRET_CHARS], at + 1)
    return line


def _without_suffix_cut_from(secret: str, line: str) -> str:
    """``line`` with an end of ``secret`` that starts it replaced."""
    piece = secret[-MIN_SECRET_CHARS:]
    at = line.find(piece, 0, len(secret) - 1)
    while at != -1:
        if secret.endswith(line[:at + MIN_SECRET_CHARS]):
            return REDACTED + line[at + MIN_SECRET_CHARS:]
        at = line.find(piece, at + 1, len(secret) - 1)
    return line


def _redacted(value: object, redactor: Redactor) -> object:
    if isinstance(value, str):
        return redactor.text(value)
    if isinstance(value, list):
        return [_redacted(item, redactor) for item in value]
    if isinstance(value, dict):
        return {key: _redacted(item, redactor) for key, item in value.items()}
    return value


class RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the message: the handler reports that, as without us
            return True
        redacted = self._redactor.text(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)  # formatters use it as it is
        if record.exc_text:
            record.exc_text = self._redactor.text(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redactor.text(record.stack_info)
        return True
