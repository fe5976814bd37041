"""`GuardProxy`: the HTTP proxy on 127.0.0.1 through which a browser context reaches the network.

Playwright's request routing sees the requests a page makes, but not every request Chromium
sends: redirect hops, speculative prefetches, requests of the browser process itself. Chromium
sends all of them through its proxy, so the proxy is where the origin lock holds: it forwards a
request only when its origin is allowed, and answers every other one itself, so that nothing
reaches the other server.

- Plain HTTP (`GET http://host:port/path`): forwarded to an allowed origin with
  `Connection: close` (one request per connection, so each request is checked); any other origin
  gets an empty `204 No Content`, which a browser treats as "stay where you are" for a navigation
  and as an empty answer for anything else.
- Tunnels (`CONNECT host:port`, used for https, wss and WebSockets): opened only to a host and
  port that an allowed origin names; any other is refused with `403`.

Blocked requests are kept (`drain()` hands them over) as `"GET http://..."` or
`"CONNECT host:port"`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["GuardProxy"]

_BLOCKED = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_REFUSED = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_TUNNEL_OPEN = b"HTTP/1.1 200 Connection Established\r\n\r\n"
_HOP_BY_HOP = {
    b"connection",
    b"proxy-connection",
    b"keep-alive",
    b"proxy-authorization",
    b"te",
    b"upgrade",
    b"host",
}
_TUNNEL_SCHEMES = ("https", "wss", "http", "ws")
_MAX_KEPT = 100
"""Blocked requests kept between two `drain()` calls (the browser's own proxy is never drained)."""
_HEAD_TIMEOUT = 120.0
"""Seconds a connection may stay open before its request head arrives (a preconnect idles)."""


class GuardProxy:
    """An HTTP proxy on 127.0.0.1 that forwards only to origins `allows` accepts.

    Args:
        allows: Whether a URL (`http://host:port/path`) may be requested. A tunnel to
            `host:port` is opened when any of `https`, `wss`, `http` or `ws` at that host and
            port is allowed.
    """

    def __init__(self, allows: Callable[[str], bool]) -> None:
        self.allows = allows
        self.blocked: list[str] = []
        """Requests refused since the last `drain()`, in order."""
        self.forwarded = 0
        """How many requests and tunnels went through."""
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`, for Chromium's proxy setting."""
        if self._server is None:
            raise RuntimeError("The proxy is not running; await start() first.")
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> GuardProxy:
        """Listen on a free port of 127.0.0.1 (in the running event loop)."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def aclose(self) -> None:
        """Stop listening and drop every open connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    def drain(self) -> list[str]:
        """The requests blocked since the last call."""
        blocked, self.blocked = self.blocked, []
        return blocked

    # ----------------------------------------------------------------- one connection

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT)
            line, _, headers = head.partition(b"\r\n")
            method, target, version = line.decode("latin-1").split(" ")
            if method == "CONNECT":
                await self._tunnel(target, reader, writer)
            else:
                await self._forward(method, target, version, headers, reader, writer)
        except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError):
            pass  # a malformed request or a peer that went away: close the connection
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    def _refuse(self, request: str) -> None:
        if request not in self.blocked and len(self.blocked) < _MAX_KEPT:
            self.blocked.append(request)

    async def _tunnel(
        self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        host, _, port = target.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            writer.write(_BAD_REQUEST)
            return
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if not any(self.allows(f"{scheme}://{netloc}/") for scheme in _TUNNEL_SCHEMES):
            self._refuse(f"CONNECT {netloc}")
            writer.write(_REFUSED)
            await writer.drain()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.write(_BAD_GATEWAY)
            return
        self.forwarded += 1
        try:
            writer.write(_TUNNEL_OPEN)
            await _first_to_finish(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            upstream_writer.close()

    async def _forward(
        self,
        method: str,
        target: str,
        version: str,
        headers: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        parts = urlsplit(target)
        if parts.scheme.lower() != "http" or not parts.hostname:
            self._refuse(f"{method} {target}")
            writer.write(_BAD_REQUEST)
            return
        if not self.allows(target):
            self._refuse(f"{method} {target}")
            writer.write(_BLOCKED)
            await writer.drain()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                parts.hostname, parts.port or 80
            )
        except OSError:
            writer.write(_BAD_GATEWAY)
            return
        self.forwarded += 1
        path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
        host = parts.netloc.rpartition("@")[2]
        upstream_writer.write(
            f"{method} {path} {version}\r\nHost: {host}\r\n".encode("latin-1")
            + _without_hop_by_hop(headers)
            + b"Connection: close\r\n\r\n"
        )
        try:
            await _first_to_finish(
                _pipe(reader, upstream_writer), _relay_response(upstream_reader, writer)
            )
        finally:
            upstream_writer.close()


def _without_hop_by_hop(headers: bytes) -> bytes:
    """The header lines of a head (after its first line) without the per-connection ones."""
    kept = []
    for line in headers.split(b"\r\n"):
        name = line.partition(b":")[0].strip().lower()
        if line and name not in _HOP_BY_HOP:
            kept.append(line + b"\r\n")
    return b"".join(kept)


async def _relay_response(upstream: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy the response, saying `Connection: close` so the browser sends no second request."""
    while True:
        head = await upstream.readuntil(b"\r\n\r\n")
        status, _, headers = head.partition(b"\r\n")
        if status.split(b" ", 2)[1:2] in ([b"100"], [b"102"], [b"103"]):  # more heads follow
            writer.write(head)
            continue
        writer.write(status + b"\r\n" + _without_hop_by_hop(headers) + b"Connection: close\r\n\r\n")
        await _pipe(upstream, writer)
        return


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while data := await source.read(65536):
        sink.write(data)
        await sink.drain()


async def _first_to_finish(*coroutines: Coroutine[Any, Any, None]) -> None:
    """Run the copies of both directions until one of them ends, then stop the other."""
    tasks = [asyncio.create_task(c) for c in coroutines]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
