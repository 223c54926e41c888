"""A fork server for the tests: ``python -m bot.cli ...`` processes without paying for Python's start each time.

Starting ``baton run`` costs about 3.5 s here, nearly all of it importing LangGraph, SQLAlchemy,
FastAPI and the adapters' libraries; the suite starts over a hundred. This process imports those
once, then forks a child per request that runs ``bot.cli`` exactly as ``python -m bot.cli`` would:
its own process (its own pid, killed by a real signal), the environment, working directory and
output files it was given, nothing run yet before the fork; its working directory first on ``sys.path``, as
``python -m`` puts it, so a ``graphs`` package there is the one Baton loads. (One difference is left: at its end
the child does not wait for threads that are not daemons, as Python does: tests of that start Python itself.) It is the idea of multiprocessing's
``forkserver``, kept here because the children are the CLI, not Python functions.

Protocol (JSON lines on stdin, answers on stdout): ``{"spawn": {...}}`` -> ``{"pid": n}``;
``{"wait": pid}`` -> ``{"returncode": n}`` once that child has ended (the caller waits on the
child's pidfd first, so this returns at once). Ends when stdin closes.

A child whose environment has ``BATON_TEST_OVERRIDES`` (``tests.support.overrides``) has those module
constants set before ``bot.cli`` runs: a test's ``monkeypatch`` of Baton's own pauses (Discord's pauses
between tries, how long a start waits for Socket Mode), in the process it starts. ``BATON_TEST_PAUSE_SCALES``
(``tests.support.quicker_library_pauses``) does it for a library's pauses, which are no constants: every
``asyncio.sleep`` of the modules it names is that many times as long (discord.py's webhooks wait 1, 3, 5, 7 and
9 s between their tries of a 5xx). ``python -m tests.forkserver --cli <args>`` does the same without a fork
server (``BATON_TEST_FORKSERVER=0``).
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import importlib
import json
import os
import sys
import threading
from typing import Any, NoReturn

# What ``baton run`` and the CLI import (lazily imported ones included), loaded before any fork.
import adapters.contract  # noqa: F401
import adapters.discord_adapter  # noqa: F401
import adapters.playground  # noqa: F401
import adapters.slack  # noqa: F401
import bot.app  # noqa: F401
import bot.cli
import bot.server  # noqa: F401
import uvicorn  # noqa: F401

# Imported by ``baton run`` only once it runs (its scheduler, uvicorn's loop and protocols): ~0.1-0.3 s a child.
LAZY_IMPORTS = ("apscheduler.executors.asyncio", "apscheduler.triggers.interval", "uvicorn.lifespan.on",
                "uvicorn.loops.asyncio", "uvicorn.protocols.websockets.auto",
                "uvicorn.protocols.websockets.websockets_sansio_impl", "websockets.server", "fastapi.telemetry._runtime")

READY = "forkserver ready"
OVERRIDES = "BATON_TEST_OVERRIDES"
PAUSE_SCALES = "BATON_TEST_PAUSE_SCALES"


def apply_overrides() -> None:
    """Set the module constants ``BATON_TEST_OVERRIDES`` names (JSON: ``{"module.NAME": value}``), or a class's
    (``{"module.Class.NAME": value}``).

    A name that is not there stops the child: an override of a constant renamed since would quietly do nothing.
    A list stands for a tuple where the constant is one (JSON has no tuples).
    """
    for target, value in json.loads(os.environ.get(OVERRIDES) or "{}").items():
        owner_name, name = target.rsplit(".", 1)
        owner = _owner(owner_name)
        if not hasattr(owner, name):
            raise SystemExit(f"{OVERRIDES}: {owner_name} has no {name}")
        if isinstance(getattr(owner, name), tuple) and isinstance(value, list):
            value = tuple(value)
        setattr(owner, name, value)


def _owner(dotted: str) -> Any:
    """The module ``dotted`` names, or the class in a module (``adapters.playground.PlaygroundAdapter``)."""
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError:
        module_name, name = dotted.rsplit(".", 1)
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            raise SystemExit(f"{OVERRIDES}: {module_name} has no {name}") from None
        return getattr(module, name)


class _ScaledPauses:
    """The ``asyncio`` one library module sees: the same, but its ``sleep`` lasts ``scale`` times as long."""

    def __init__(self, scale: float) -> None:
        self._scale = scale

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def sleep(self, delay: float, result: Any = None) -> Any:
        return asyncio.sleep(delay * self._scale, result)


def apply_pause_scales() -> None:
    """Scale the pauses of the library modules ``BATON_TEST_PAUSE_SCALES`` names (JSON: ``{"module": scale}``).

    A module that does not use ``asyncio`` by that name stops the child: the scale would quietly do nothing.
    """
    for module_name, scale in json.loads(os.environ.get(PAUSE_SCALES) or "{}").items():
        module = importlib.import_module(module_name)
        if getattr(module, "asyncio", None) is not asyncio:
            raise SystemExit(f"{PAUSE_SCALES}: {module_name} does not pause with asyncio.sleep")
        module.asyncio = _ScaledPauses(float(scale))  # type: ignore[attr-defined]


def _child(request: dict[str, Any]) -> NoReturn:
    """In the forked child: become ``python -m bot.cli <args>`` and never return into the server's loop."""
    code = 1
    try:
        os.chdir(request["cwd"])
        sys.path[0] = os.getcwd()  # as ``python -m`` there: a ``graphs`` package in that directory comes first
        os.environ.clear()
        os.environ.update(request["env"])
        stdin = os.open(os.devnull, os.O_RDONLY)
        stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        stderr = stdout if request.get("stderr") is None else \
            os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for source, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(source, target)
        for opened in {stdin, stdout, stderr}:
            os.close(opened)
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        sys.argv = ["baton", *request["args"]]
        try:
            apply_overrides()
            apply_pause_scales()
            bot.cli.app(request["args"], prog_name="baton")
            code = 0
        except SystemExit as exit_:
            code = exit_.code
            if code is None:
                code = 0
            elif not isinstance(code, int):  # sys.exit("message"): printed, exit status 1, as Python does
                print(code, file=sys.stderr)
                code = 1
    except BaseException:  # noqa: BLE001 - reported in the child's own output, as Python would
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _returncode(status: int) -> int:
    """As ``subprocess.Popen.returncode``: the exit code, or minus the signal that ended the child."""
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _preload() -> None:
    """Import what a child would import lazily, then freeze what is loaded out of the garbage collector's scans.

    ``baton run``'s start (``bot.server.settle_garbage_collector``) collects and freezes what start-up built: in
    a child of this process that first collection walked every module imported here, ~0.4 s a start. Frozen
    here, the child's collection walks only what it built itself, and freezes that, as a fresh process would.
    """
    for name in LAZY_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:  # another version of the library: the child imports what it needs itself
            pass
    gc.collect()
    gc.freeze()


def main() -> None:
    _preload()
    if threading.active_count() != 1:  # a fork would copy no other thread but whatever locks they held
        raise SystemExit(f"forkserver: the imports started threads ({threading.enumerate()}); not forking")
    answers = sys.stdout
    print(READY, file=answers, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "spawn" in request:
            answers.flush()
            pid = os.fork()
            if pid == 0:
                _child(request["spawn"])
            answer: dict[str, Any] = {"pid": pid}
        else:
            _, status = os.waitpid(int(request["wait"]), 0)
            answer = {"returncode": _returncode(status)}
        print(json.dumps(answer), file=answers, flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--cli"]:  # one ``bot.cli`` process with the overrides, no fork server
        apply_overrides()
        apply_pause_scales()
        bot.cli.app(sys.argv[2:], prog_name="baton")
    else:
        main()
