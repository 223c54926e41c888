"""A TCP proxy to cut a database away from a running Baton and bring it back (``tests/test_database_outage.py``).

It forwards 127.0.0.1:<its port> to a target (PostgreSQL at 127.0.0.1:5432), from a thread of its own.
``cut()`` closes every connection it carries and stops listening, so a new connection is refused as by
a server that is down (``cut(count=True)``: it keeps listening and resets each new connection at once,
counting them in ``refused``: a test can wait for Baton to have tried N times); ``restore()`` carries
connections again on the same port. The shared server is never touched.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Self


class DatabaseProxy:
    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5432) -> None:
        self.target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="database-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._resetting = False
        self._cuts = 0
        self.port = 0
        self.connections = 0  # connections carried since the start
        self.refused = 0  # connections reset while cut with count=True

    def start(self) -> Self:
        self._thread.start()
        with socket.socket() as probe:  # a free port, kept across cut and restore
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._call(self._listen())
        return self

    def url(self, database_url: str) -> str:
        """``database_url`` (postgresql://user@127.0.0.1:5432/name) through this proxy."""
        host_port = f"{self.target[0]}:{self.target[1]}"
        assert host_port in database_url, database_url
        return database_url.replace(host_port, f"127.0.0.1:{self.port}", 1)

    def cut(self, *, count: bool = False) -> None:
        """Refuse new connections and close every open one (a database server that went away)."""
        self._call(self._cut(keep_listening=count))

    def restore(self) -> None:
        self._resetting = False
        self._call(self._listen())

    def stop(self) -> None:
        self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _call(self, coroutine: object) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)  # type: ignore[arg-type]

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._carry, "127.0.0.1", self.port, reuse_address=True)

    async def _cut(self, keep_listening: bool = False) -> None:
        self._cuts += 1  # a connection being made across the cut is dropped when it is made (``_carry``)
        self._resetting = keep_listening
        if self._server is not None and not keep_listening:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            transport = writer.transport
            transport.abort()  # at once, unsent data dropped: the peer sees its connection broken
        self._writers.clear()

    async def _carry(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._resetting:
            self.refused += 1
            client_writer.transport.abort()
            return
        self.connections += 1
        cuts = self._cuts
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        if cuts != self._cuts:  # cut meanwhile: this connection would carry traffic through the outage
            client_writer.transport.abort()
            server_writer.transport.abort()
            return
        self._writers.update((client_writer, server_writer))

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                self._writers.discard(writer)
                writer.transport.abort()

        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))
