"""The ``baton`` command line (Typer)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import socket
import sqlite3
import sys
import threading
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import typer
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from pydantic import ValidationError
from sqlalchemy import and_
from sqlalchemy.exc import DBAPIError
from sqlmodel import func, select

from bot.approvals import waiting_for, who_may_approve
from bot.config import ConfigError, check_digest_platforms, load_config, printable
from bot.messages import first_line, validation_words
from bot.redaction import Redactor
from bot.registry import GraphError, GraphRegistry
from bot.settings import Settings, export_env_file
from storage.checkpointer import check_sqlite_checkpoints, setup_postgres_checkpoints, sqlite_checkpoint_path
from storage.db import Database, check_url, is_sqlite, linked_file, sqlite_path, sync_url
from storage.migrate import alembic_config, autogenerate, oldest_reader, upgrade
from storage.models import Approval, AuditEntry, InboundEvent, OutboxMessage, Run, ThreadRecord

# A traceback never shows local variables (the database URL with its password): older Typers, which
# pyproject's typer>=0.12 allows, showed them by default.
app = typer.Typer(help="Baton: chat-ops orchestrator.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_show_locals=False)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _version(asked: bool) -> None:
    if asked:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"Baton {version('baton')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("Baton (version unknown: not installed; `pip install -e .` installs it)")
        raise typer.Exit()


@app.callback()
def _options(_version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                           help="Show Baton's version and exit.")) -> None:
    # Which Baton is this? Replicas upgraded one by one, and a database "a newer Baton migrated", ask it;
    # `baton --version` was "No such option".
    _shown_on_any_terminal()


def _shown_on_any_terminal() -> None:
    """What a terminal's encoding cannot show (an emoji on a Latin-1 terminal, LANG=de_DE.ISO-8859-1 over SSH)
    is written as '?': it stopped `baton threads` half-way with a UnicodeEncodeError traceback."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")


def _fail(message: str) -> NoReturn:
    typer.secho(message, fg="red", err=True)
    raise typer.Exit(2)


def _settings() -> Settings:
    try:
        settings = Settings()
        export_env_file(settings)
        return settings
    except UnicodeDecodeError as exc:  # only .env is read as a file
        _fail(f"Baton's settings: .env is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}).")
    except OSError as exc:  # .env there but unreadable (its permissions)
        _fail(f"Baton's settings: .env cannot be read: {exc.strerror or exc}")
    except ValidationError as exc:  # the messages name the setting, never its value (it may be a secret)
        problems = "\n".join(f"  {'.'.join(str(part) for part in error['loc'])}: {validation_words(error)}"
                             for error in exc.errors())
        _fail(f"Baton's settings (environment or .env) are not valid:\n{problems}")


def _settings_and_config() -> tuple[Settings, Any]:
    settings = _settings()
    try:
        config = load_config(settings.config_path, required=settings.config_named)
        check_digest_platforms(config, settings.config_path)
        return settings, config
    except ConfigError as exc:
        problems = printable(str(exc), lines=True)  # it quotes what the file holds
        _fail(f"Baton cannot start: {settings.config_path} is not valid:\n{problems}")
    except OSError as exc:  # looking for the file failed: a directory Baton may not enter, a name too long
        _fail(printable(f"Baton cannot start: {settings.config_path} cannot be read (BATON_CONFIG): "
                        f"{exc.strerror or exc}"))


def _graphs() -> GraphRegistry:
    try:
        return GraphRegistry.discover()
    except GraphError as exc:
        _fail(f"Baton cannot load its graphs: {exc}")


@contextmanager
def _database(url: str) -> Iterator[None]:
    """A database that cannot be reached or opened is one line naming it (without its password)."""
    try:
        yield
    except DBAPIError as exc:
        reason = (str(exc.orig).strip().splitlines() or ["no reason given"])[0]
        _fail(f"Baton cannot use the database {check_url(url)}: {reason}")


@app.command()
def run() -> None:
    """Start Baton: the HTTP server, the adapters, and the background loops."""
    import uvicorn

    from bot.server import EVENT_LOOP, GuardedHttpProtocol, create_app

    if threading.current_thread() is threading.main_thread():  # until the server is up: see _sighup_while_starting
        _terminal.started_in_foreground = _in_terminal_foreground()
        signal.signal(signal.SIGHUP, _sighup_while_starting)
    settings, config = _settings_and_config()
    if not settings.config_named and not settings.config_path.exists():  # started in another directory?
        typer.echo(f"No {settings.config_path} in {Path.cwd()}: Baton starts without runbooks or approvers "
                   "(BATON_CONFIG names the file).")
    _graphs()  # a graph module that cannot be used stops Baton before it makes or migrates a database
    listening = _listening_socket(settings.host, settings.port)
    settings = settings.model_copy(update={"port": listening.getsockname()[1]})  # BATON_PORT=0: the port it got
    # The adapters' settings (BATON_ADAPTERS, a Slack token without its secret) are checked before the database:
    # such a typo made baton.db, or migrated the replicas' shared PostgreSQL database, then stopped Baton.
    try:
        web = create_app(settings, config)
    except ValueError as exc:
        typer.secho(f"Baton cannot start: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    _ready(settings)  # the migrations, before the server: a database that cannot be used is one clear line
    # force: a graph module's own logging.basicConfig (at its import, above) made this one do nothing, and
    # BATON_LOG_LEVEL with it (Baton's start and its requests went unlogged)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    redactor = Redactor.for_settings(settings)
    redactor.install_in_logging()
    names = ", ".join(adapter.name for adapter in web.state.baton.adapters)
    typer.echo(f"Baton is starting with: {names}")
    if "playground" in names:
        typer.echo(f"Playground: {settings.base_url}/")
    # BATON_PORT=0's port, where Slack's events are to be sent: only the playground's line named it (its
    # BATON_PUBLIC_URL's, when set), and a Baton serving Slack said nowhere which port it had got.
    listening_at = settings.model_copy(update={"public_url": None}).base_url
    if "playground" not in names or settings.base_url != listening_at:
        typer.echo(f"Listening on {listening_at}")
    server = _server(uvicorn.Config(web, log_level=settings.log_level.lower(), loop=EVENT_LOOP, http=GuardedHttpProtocol,
                                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS))
    redactor.install_in_logging()  # uvicorn's own handlers, made just now
    try:
        server.run(sockets=[listening])
    except KeyboardInterrupt:
        pass
    if not server.started:
        raise typer.Exit(3)


GRACEFUL_SHUTDOWN_SECONDS = 10  # then requests still open are cancelled


def _server(config: Any) -> Any:
    """uvicorn's server, which also tells Baton when it is asked to stop. uvicorn waits for open
    connections to close before it stops, and a playground page's live stream never closes by itself:
    one open tab kept ``baton run`` from stopping. SIGHUP reads ``baton.yaml`` again, unless it is the
    terminal Baton runs in that hung up: then Baton stops, as it did before SIGHUP meant anything else."""
    import uvicorn

    from bot.server import OutOfFiles, accept_without_spinning

    class StoppingServer(uvicorn.Server):
        reloads: set[asyncio.Task[bool]] = set()

        def handle_exit(self, sig: int, frame: Any) -> None:
            config.app.state.baton.stopping = True  # the live streams end at their next look (0.5 s)
            super().handle_exit(sig, frame)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(OutOfFiles(loop.get_exception_handler()))
            accept_without_spinning(loop)  # before the server starts to listen
            await super().startup(sockets=sockets)
            if self.started and threading.current_thread() is threading.main_thread():
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.hung_up)
                if _terminal.reload_asked:  # a SIGHUP while Baton started: the file may have changed since
                    _terminal.reload_asked = False
                    self.hung_up()

        def hung_up(self) -> None:
            if terminal_hung_up():
                self.handle_exit(signal.SIGHUP, None)
                return
            reload = asyncio.create_task(config.app.state.baton.reload_config())
            self.reloads.add(reload)  # kept until done: the loop holds tasks only weakly
            reload.add_done_callback(self.reloads.discard)

    return StoppingServer(config)


class _terminal:  # noqa: N801 - what run() learnt at its start
    started_in_foreground = False
    reload_asked = False


def _in_terminal_foreground() -> bool:
    """Whether Baton runs as the foreground job of its controlling terminal (``make run`` in a shell)."""
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        try:
            if os.tcgetpgrp(stream.fileno()) == os.getpgrp():
                return True
        except (OSError, AttributeError, ValueError):
            pass
    return False


def _sighup_while_starting(_signum: int, _frame: Any) -> None:
    """A SIGHUP before the server is up: a closed terminal's stops Baton as before; another one (a supervisor's
    reload) reads baton.yaml again once Baton has started, instead of killing it half-started."""
    if terminal_hung_up():
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGHUP)
        return
    _terminal.reload_asked = True


def terminal_hung_up() -> bool:
    """Whether the terminal Baton runs in (``make run`` in a shell) was closed: a SIGHUP then is the hang-up
    it was named for, not a request to read ``baton.yaml`` again (``kill -HUP``, a supervisor's reload).
    A hung-up terminal answers every question with EIO (``isatty`` too says no then); a file or a pipe, ENOTTY.
    A terminal stays hung up for good: stdin alone answering EIO is a hang-up only for a Baton started in the
    terminal's foreground; one left running in the background (``& disown``, its output in a file) reloads."""
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        try:
            os.tcgetpgrp(stream.fileno())
        except OSError as exc:
            if exc.errno == errno.EIO and (stream is not sys.stdin or _terminal.started_in_foreground):
                return True
        except (AttributeError, ValueError):  # no descriptor (closed, replaced): nothing to ask
            pass
    return False


def _listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything starts. uvicorn binds only after the app's start-up:
    with the port taken, Baton started its adapters and loops on the database, then stopped."""
    listening = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as exc:
        listening.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # ::1:8000 read as an address, no port
        _fail(f"Baton cannot listen on {where} (BATON_HOST, BATON_PORT): {exc.strerror or exc}")
    listening.set_inheritable(True)
    return listening


@app.command()
def graphs() -> None:
    """List the graphs Baton found in graphs/ and the runbooks of baton.yaml."""
    settings, config = _settings_and_config()
    for spec in _graphs():  # a description's control characters (YAML's "\e") are shown as U+FFFD, as in _table
        typer.echo(printable(f"{spec.name:<12} {_one_line(spec.description) or '(no description)'}  "
                             f"(e.g. `{spec.example}`)"))
    for name, runbook in config.runbooks.items():
        typer.echo(printable(f"run {name:<8} {_one_line(runbook.description)}  [risk {runbook.risk}]"))
    # How a change is checked before a reload: run in the wrong directory, it listed no runbook and said nothing.
    if not settings.config_named and not settings.config_path.exists():
        typer.echo(printable(f"No {settings.config_path} in {Path.cwd()}: no runbooks or approvers "
                             "(BATON_CONFIG names the file)."))
    elif not config.runbooks:
        typer.echo(printable(f"{settings.config_path} has no runbooks."))


def _one_line(text: str) -> str:
    """A description written over several lines (YAML's ``|``), on one line of the listing."""
    return " ".join(text.split())


@app.command()
def threads(limit: int = typer.Option(20, min=1, max=10_000, help="How many, newest first.")) -> None:
    """Show recent thread records: where, which graph, status."""

    async def show() -> None:
        database = Database(settings.database_url)
        try:
            async with database.read() as session:
                rows = (await session.exec(select(ThreadRecord).order_by(ThreadRecord.updated_at.desc()).limit(limit))).all()  # type: ignore[attr-defined]
                # A thread that never started a run (its requests were refused or answered at once) is
                # shown by its latest message and what became of it, not as a blank "idle".
                unstarted = [row.id for row in rows if not row.graph]
                newest = select(func.max(InboundEvent.id)).where(
                    InboundEvent.thread_record_id.in_(unstarted), InboundEvent.kind == "message",  # type: ignore[union-attr]
                ).group_by(InboundEvent.thread_record_id)
                latest = (await session.exec(select(InboundEvent).where(
                    InboundEvent.id.in_(newest)))).all() if unstarted else []  # type: ignore[union-attr]
                # A failed thread says why (its last run's error: "exit code 3", "cancelled by alice"); it said
                # only "failed", and what went wrong was one `baton audit` away for each.
                failed = [row.id for row in rows if row.status == "failed"]
                last_run = select(func.max(Run.id)).where(
                    Run.thread_record_id.in_(failed)).group_by(Run.thread_record_id)  # type: ignore[attr-defined]
                errors = dict((await session.exec(select(Run.thread_record_id, Run.error).where(
                    Run.id.in_(last_run)))).all()) if failed else {}  # type: ignore[union-attr]
                # Messages the platform refused for good (Baton removed from the channel, say): the thread said
                # "done" or "waiting" though nobody there saw its reply or its card.
                # By each listed thread (ix_outbox_thread_status): by platform and channel it read every failed row
                # of the platform, or every row of those channels, however old (retention is off by default).
                refused = (await session.exec(
                    select(ThreadRecord.id, func.count(), func.max(OutboxMessage.error)).join(OutboxMessage, and_(
                        OutboxMessage.platform == ThreadRecord.platform, OutboxMessage.channel == ThreadRecord.channel,
                        OutboxMessage.thread == ThreadRecord.thread)).where(  # type: ignore[arg-type]
                        ThreadRecord.id.in_([row.id for row in rows]),  # type: ignore[union-attr]
                        OutboxMessage.status == "failed").group_by(ThreadRecord.id))).all()
                undelivered = {record_id: (count, error) for record_id, count, error in refused}
        finally:
            await database.dispose()
        if not rows:
            typer.echo("No threads yet.")
            return
        last_message = {event.thread_record_id: event for event in latest}
        hide = Redactor.for_settings(settings).text

        def status_and_request(row: ThreadRecord) -> tuple[str, str]:
            event = last_message.get(row.id)  # type: ignore[arg-type]  # only threads without a run are in it
            if event is None:
                reason = first_line(hide(errors.get(row.id) or ""), FAILURE_CHARS + 1)
                if len(reason) > FAILURE_CHARS:
                    reason = reason[:FAILURE_CHARS - 1].rstrip() + "…"
                return (f"{row.status} ({reason})" if reason else row.status), hide(row.title or "")
            status = f"answered ({event.outcome})" if event.status == "done" else "queued"
            return status, hide(event.text.strip())

        def not_delivered(row: ThreadRecord) -> str:
            count, error = undelivered.get(row.id, (0, None))  # type: ignore[arg-type]
            if not count:
                return ""
            said = first_line(hide(error or ""), FAILURE_CHARS + 1)
            said = said[:FAILURE_CHARS - 1].rstrip() + "…" if len(said) > FAILURE_CHARS else said
            return f"; {count} message{'s' if count > 1 else ''} not delivered ({said})"

        table = []
        for row in rows:
            status, request = status_and_request(row)
            status += not_delivered(row)
            table.append([f"{row.updated_at:%Y-%m-%d %H:%M}", f"{row.platform}/{row.channel}/{row.thread}", status,
                          row.graph or "-", request.splitlines()[0][:80] if request else ""])
        _table(["updated (UTC)", "thread", "status", "graph", "request"], table, hide)

    settings = _settings()
    _existing(settings)
    with _database(settings.database_url):
        asyncio.run(show())


MOST_LISTED = 10_000  # --limit's largest
FAILURE_CHARS = 40  # of a failed thread's reason in `baton threads`: the audit log has the whole of it


@app.command()
def approvals(all_: bool = typer.Option(False, "--all", help="Include decided approvals."),
              limit: int = typer.Option(100, min=1, max=10_000, help="How many, newest first.")) -> None:
    """Show approvals waiting for a human (or all of them)."""

    async def show() -> None:
        database = Database(settings.database_url)
        try:
            async with database.read() as session:
                # With the request and its thread: two cards of one runbook ("Run `restart`: Restart a service.")
                # could not be told apart, nor found in the chat.
                query = (select(Approval, Run.input_text, ThreadRecord)
                         .outerjoin(Run, Run.id == Approval.run_id)  # type: ignore[arg-type]
                         .outerjoin(ThreadRecord, ThreadRecord.id == Approval.thread_record_id)  # type: ignore[arg-type]
                         .order_by(Approval.created_at.desc()))  # type: ignore[attr-defined]
                counted = select(func.count()).select_from(Approval)
                if not all_:
                    query = query.where(Approval.status == "pending")
                    counted = counted.where(Approval.status == "pending")
                rows = (await session.exec(query.limit(limit))).all()
                # The newest 100 were shown as if they were all: the 101st card waiting was nowhere.
                total = (await session.exec(counted)).one() if len(rows) == limit else len(rows)
        finally:
            await database.dispose()
        if not rows:
            typer.echo("No approvals." if all_ else "Nothing is waiting for approval.")
            return
        hide = Redactor.for_settings(settings).text  # before the request is cut to its first 80 characters
        _table(["asked (UTC)", "id", "status", "risk", "asked by", "may approve", "what"],
               [[f"{row.created_at:%Y-%m-%d %H:%M}", row.id,
                 _decision(row), row.risk, row.requested_by,
                 _may_approve(row),
                 _what_is_approved(row, hide(request or ""), thread)] for row, request, thread in rows], hide)
        if total > len(rows):
            shows = "shows them" if total <= MOST_LISTED else f"shows the newest {MOST_LISTED}"
            typer.echo(f"... and {total - len(rows)} older ({total} in all; --limit {min(total, MOST_LISTED)} {shows}).")

    settings = _settings()
    _existing(settings)
    with _database(settings.database_url):
        asyncio.run(show())


def _decision(approval: Approval) -> str:
    """An approval's status as its card words it: one nobody decided in time (or whose run ended) is "stale" in the
    database, and was listed as "stale by Baton", where its card says "Expired by Baton"."""
    status = "expired" if approval.status == "stale" else approval.status
    return f"{status} by {approval.decided_by}" if approval.decided_by else status


APPROVERS_CHARS = 40  # of `baton approvals`' "may approve": the names that fit, then how many more


def _may_approve(approval: Approval) -> str:
    """Who may approve, as the card says, in about ``APPROVERS_CHARS``: every row is padded to the widest, and twelve
    approvers' Slack ids made each row of the table wrap over four lines of a terminal."""
    allowed = who_may_approve(approval.approvers, approval.requested_by, approval.risk)
    shown = allowed[:1]
    for name in allowed[1:]:
        if len(", ".join([*shown, name])) > APPROVERS_CHARS:
            break
        shown.append(name)
    if len(shown) == len(allowed):
        return waiting_for(approval.approvers, approval.requested_by, approval.risk)
    return f"{', '.join(shown)} and {len(allowed) - len(shown)} more"


def _what_is_approved(approval: Approval, request: str | None, thread: ThreadRecord | None) -> str:
    """The card's question, then the request it came from and where its thread is, as `baton threads` shows it."""
    asked = first_line(request or "")
    shown = first_line(approval.summary)
    where = [f"asked: {asked}"] if asked and asked.lower() not in shown.lower() else []
    if thread is not None:
        where.append(f"in {thread.platform}/{thread.channel}/{thread.thread}")
    return f"{shown} ({'; '.join(where)})".strip() if where else shown


@app.command()
def audit(
    thread_or_correlation: str | None = typer.Argument(
        None, metavar="THREAD|CORRELATION", help="A thread (as `baton threads` shows its last part, or the whole "
        "platform/channel/thread) or a request's correlation id; none: the latest entries."),
    limit: int = typer.Option(50, min=1, max=10_000, help="How many entries, the latest ones, shown oldest first."),
) -> None:
    """Show the audit log: what happened, in order, from the chat event to the run, the approval and the effect."""

    async def show() -> None:
        query = select(AuditEntry)
        if wanted:
            *place, thread = wanted.split("/") if wanted.count("/") == 2 else ("", "", wanted)
            where = AuditEntry.thread == thread
            if all(place):
                where = where & (AuditEntry.platform == place[0]) & (AuditEntry.channel == place[1])
            query = query.where(where | (AuditEntry.correlation_id == wanted))
        database = Database(settings.database_url)
        try:
            async with database.read() as session:
                rows = (await session.exec(query.order_by(AuditEntry.id.desc()).limit(limit))).all()  # type: ignore[union-attr]
        finally:
            await database.dispose()
        if not rows:
            typer.echo(f"Nothing in the audit log for {printable(wanted)}." if wanted else "The audit log is empty.")
            return
        hide = Redactor.for_settings(settings).text
        _table(["at (UTC)", "request", "what", "who", "run", "details"],
               [[f"{row.at:%Y-%m-%d %H:%M:%S}", row.correlation_id, row.kind, row.user or "-",
                 row.run_id or "-", _details(row, hide)] for row in reversed(rows)], hide)

    wanted = (thread_or_correlation or "").strip()
    settings = _settings()
    _existing(settings)
    with _database(settings.database_url):
        asyncio.run(show())


def _details(row: AuditEntry, hide: Callable[[str], str]) -> str:
    """An entry's details on one line: the approval, then what the entry recorded (graph, outcome, error...), its
    secrets hidden (``hide``) before it is cut: a cut secret is no longer found."""
    shown = [f"approval={row.approval_id}"] if row.approval_id else []
    shown += [f"{key}={_value(value)}" for key, value in row.detail.items() if value not in (None, "", [], {})]
    return hide(" ".join(_one_line(part) for part in shown))[:200]


def _value(value: Any) -> str:
    """A detail's value as people write it: a list as ``alice,bob`` (it was Python's ``['alice', 'bob']``), a flag
    as ``yes``/``no``, anything else nested as JSON."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(_value(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return str(value)


def _table(headers: list[str], rows: list[list[Any]], hide: Callable[[str], str]) -> None:
    """Print aligned columns under a header (the last column is not padded). What people wrote is shown with
    its control characters as U+FFFD: an escape sequence in a request would act on the reader's terminal
    (write its clipboard, retitle it, hide the lines after it). Baton's secrets (``Redactor``) are hidden as in
    every message and log line: a run's error or a request may hold one, and this output is pasted in chats."""
    cells = [headers] + [[printable(hide(str(cell))) for cell in row] for row in rows]
    widths = [max(_columns(row[column]) for row in cells) for column in range(len(headers) - 1)]
    for row in cells:
        padded = [cell + " " * (width - _columns(cell)) for cell, width in zip(row, widths)]
        typer.echo("  ".join([*padded, row[-1]]).rstrip())


def _columns(text: str) -> int:
    """How many terminal columns ``text`` takes: East Asian wide characters and emoji take two, combining marks
    and zero-width characters none. Padded by characters, a row holding '田中' stood two columns right."""
    return sum(0 if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf")
               else 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1 for char in text)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="A revision id to upgrade to; default: the latest.")) -> None:
    """Apply the database migrations (also done automatically by `baton run`)."""
    settings = _settings()
    # Checked before the database is opened (an unknown one made an empty SQLite file). Alembic failed on an
    # assertion for "" or "head+1", and took "+1" or "0003@head" as steps: "nothing changed", it then said.
    revisions = sorted(script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions())
    if revision not in (*revisions, "head", "heads", "base"):
        _fail(f"Baton cannot upgrade to '{printable(revision[:40])}': Can't locate revision: name one of "
              f"{', '.join(revisions)}, or head (relative ones like +1 or head-1 are not taken)")
    _sqlite_place(settings.database_url)
    try:
        with _database(settings.database_url):
            before = _revision(settings.database_url)
            upgrade(settings.database_url, revision)
    except CommandError as exc:  # a newer Baton migrated the database
        _fail(f"Baton cannot upgrade to '{revision[:40]}': {exc}")
    if revision in ("head", "heads"):
        _checkpoint_tables(settings.database_url)
    with _database(settings.database_url):
        current = _revision(settings.database_url)
    if current is not None and current not in revisions:  # else "'head' is not ahead of it", as if asked to downgrade
        typer.echo(f"Database is at revision {printable(current[:40])}, a newer Baton's: its migrations only added "
                   "what this Baton does not read, so this one runs on it as it is; nothing changed.")
    elif current == _head_revision() and revision not in ("head", "heads", current):
        typer.echo(f"Database is up to date (revision {current}); '{revision[:40]}' is not ahead of it, "
                   "so nothing changed (Baton does not downgrade).")
    elif current == _head_revision():  # what it did: pointed at a database someone migrated already, it did nothing
        typer.echo(f"Database is up to date (revision {current}): nothing to do." if before == current else
                   f"Database made at revision {current} (it held no Baton tables): up to date." if before is None
                   else f"Database migrated from revision {before} to {current}: up to date.")
    elif current == revision:
        typer.echo(f"Database is at revision {current}.")
    elif current is None:  # "base" on a new database
        typer.echo(f"Database has no Baton tables yet; '{revision}' is not ahead of that, so nothing changed "
                   "(`baton db upgrade` makes them).")
    else:  # "base", or an older revision than the database's: upgrade does nothing, and said "migrated"
        typer.echo(f"Database is at revision {current}; '{revision[:40]}' is not ahead of it, so nothing changed "
                   "(Baton does not downgrade).")


@db_app.command("revision")
def db_revision(message: str = typer.Argument(..., help="What the migration changes.")) -> None:
    """For developers: write a migration from the difference between the models and the database."""
    settings = _settings()
    url = settings.database_url
    _sqlite_place(url)
    with _database(url):
        current = _revision(url)
    # Alembic compares the models with the database from the database's revision: one of a newer Baton's (a branch
    # whose migration only added to it, which `baton run` runs on) stopped it on a traceback ("Can't locate revision").
    if current is not None and current not in _known_revisions():
        _fail(f"Baton cannot write a migration from the database {check_url(url)}: it is at revision "
              f"{printable(current[:40])}, which this Baton does not have (a newer Baton migrated it); point "
              "BATON_DATABASE_URL at a database this Baton made, such as a new SQLite file")
    _ready(settings)
    with _database(settings.database_url):
        written = autogenerate(settings.database_url, message)
    if written is None:
        typer.echo("The models and the database do not differ: no migration was written.")


def _existing(settings: Settings) -> None:
    """For the commands that only read: a Baton database must be there already. They made one: a SQLite
    file where there was none (``baton threads`` in the wrong directory said "No threads yet."), or
    Baton's tables in whatever PostgreSQL database the URL named (``postgres`` itself)."""
    url = settings.database_url
    shown = check_url(url)
    if is_sqlite(url) and not _looked_up(url, Path(sqlite_path(url)).exists):
        _fail(f"Baton cannot use the database {shown}: there is no such file (`baton run` or "
              "`baton db upgrade` makes it; BATON_DATABASE_URL names another)")
    _sqlite_place(url)
    with _database(url):
        revision, readable_from = _revisions(url)
    if revision is None:
        _fail(f"Baton cannot use the database {shown}: it holds no Baton tables (`baton run` or "
              "`baton db upgrade` makes them)")
    known = _known_revisions()
    if revision != _head_revision() and revision in known:
        _fail(f"Baton cannot use the database {shown}: its tables are of an older Baton (revision {revision}); "
              "`baton db upgrade` brings them up to date")
    # A newer Baton's database is read as it is only when its migrations added what this one does not read, as
    # `baton run` decides: one that changed more was read anyway ("no such column: thread_records.title").
    if revision not in known and readable_from not in known:
        _fail(f"Baton cannot use the database {shown}: the database is at revision {printable(revision[:40])}, "
              "which this Baton does not have: a newer Baton migrated it. Run that Baton (or a newer one); "
              "Baton does not downgrade.")


def _revision(url: str) -> str | None:
    """The migration the database is at (``None``: no Baton tables)."""
    return _revisions(url)[0]


def _revisions(url: str) -> tuple[str | None, str | None]:
    """The migration the database is at (``None``: no Baton tables), and the oldest revision whose code may read
    it (``storage.migrate.oldest_reader``: a newer Baton's migrations that only added to it leave an older one)."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision(), oldest_reader(connection)
    finally:
        engine.dispose()


def _known_revisions() -> set[str]:
    """The revisions of this Baton's migrations."""
    return {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def _head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _ready(settings: Settings) -> None:
    _sqlite_place(settings.database_url)
    try:
        with _database(settings.database_url):
            upgrade(settings.database_url)
    except CommandError as exc:  # a newer Baton migrated the database: one line, not a traceback
        _fail(f"Baton cannot use the database {check_url(settings.database_url)}: {exc}")
    try:
        check_sqlite_checkpoints(settings.database_url)
    except sqlite3.Error as exc:
        _fail(f"Baton cannot use its checkpoint database {sqlite_checkpoint_path(settings.database_url)}: {exc}")
    _checkpoint_tables(settings.database_url)


def _checkpoint_tables(url: str) -> None:
    """On PostgreSQL, LangGraph's checkpoint tables made or migrated beside Baton's: by `baton db upgrade` too, so
    that the owner who migrates makes them for replicas running as a role that may not create tables (whose
    first start stopped with a traceback). One line if it fails."""
    if is_sqlite(url):
        return
    try:
        asyncio.run(setup_postgres_checkpoints(url))
    except psycopg.Error as exc:
        _fail(f"Baton cannot use the database {check_url(url)}: LangGraph's checkpoint tables: {first_line(str(exc), 300)}")


def _sqlite_place(url: str) -> None:
    """A SQLite file Baton makes needs its directory: SQLite says only "unable to open database file" (for
    ``sqlite:///~/baton.db`` too: ``~`` is not the home directory there)."""
    if not is_sqlite(url):
        return
    path = Path(sqlite_path(url))
    if _looked_up(url, path.is_dir):
        _fail(f"Baton cannot use the database {check_url(url)}: {path} is a directory; name a file in it")
    place = linked_file(path).parent  # baton.db linked to a data volume that is not mounted: the volume's directory
    if not _looked_up(url, place.is_dir):
        linked = f" ({path} is a link to {linked_file(path)})" if place != path.parent else ""
        _fail(f"Baton cannot use the database {check_url(url)}: there is no directory {place} for it{linked}")


def _looked_up(url: str, question: Callable[[], bool]) -> bool:
    """``question`` about the SQLite file's place (``Path.exists``...), or one line when it cannot be answered: a
    directory Baton's user may not enter (Permission denied), a name too long. It was a PermissionError traceback."""
    try:
        return question()
    except OSError as exc:
        _fail(printable(f"Baton cannot use the database {check_url(url)}: {exc.strerror or exc}"))


if __name__ == "__main__":
    sys.exit(app())
