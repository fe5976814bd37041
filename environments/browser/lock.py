"""The origin lock of one browser context: what it may request, and what it was stopped from.

Two guards, because neither sees everything alone:

- routes on the context (Playwright's `route` and `route_web_socket`) abort the requests a page
  makes; an aborted navigation leaves the page where it was;
- the context's `GuardProxy` checks every request Chromium sends for the context, including
  those the routes never see: redirect hops, prefetches and prerenders, the browser's own.

Both write to one list of blocked requests, which the next observation shows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .proxy import GuardProxy

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, ProxySettings, Route, WebSocketRoute

__all__ = ["NO_NETWORK_SCHEMES", "ContextLock", "origin_of"]

NO_NETWORK_SCHEMES = ("about", "data", "blob", "javascript")
"""URL schemes that need no network: always allowed."""
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_MAX_BLOCKED = 20
_BROWSER_SERVICE_DOMAINS = ("google.com", "googleapis.com", "gstatic.com", "gvt1.com", "gvt2.com")
"""Chromium's own services (autofill, updates, accounts) live here: the proxy blocks their
requests like any other, but they are not the page's doing, so observations do not list them."""


def origin_of(url: str) -> str:
    """`scheme://host:port` of a URL, with the default port spelled out (`http://a` -> `:80`)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or _DEFAULT_PORTS.get(scheme)
    host = (parts.hostname or "").lower()
    return f"{scheme}://{host}:{port}" if port else f"{scheme}://{host}"


class ContextLock:
    """The proxy and the route guards of one browser context, and the requests they blocked.

    Args:
        allows: Whether a URL may be requested.
    """

    def __init__(self, allows: Callable[[str], bool]) -> None:
        self.allows = allows
        self.proxy = GuardProxy(allows)
        self._blocked: list[str] = []

    async def start(self) -> ContextLock:
        """Start the proxy (before the context is made: its address is a context option)."""
        await self.proxy.start()
        return self

    @property
    def proxy_settings(self) -> ProxySettings:
        """Playwright's `proxy` option for the context.

        `<-loopback>` sends 127.0.0.1 and localhost through the proxy too (Chromium would go
        to them directly).
        """
        return {"server": self.proxy.url, "bypass": "<-loopback>"}

    async def guard(self, context: BrowserContext) -> None:
        """Route every request and WebSocket of `context` through the origin check."""
        await context.route("**/*", self._guard_request)
        await context.route_web_socket(re.compile(".*"), self._guard_socket)

    async def aclose(self) -> None:
        await self.proxy.aclose()

    def note(self, request: str) -> None:
        """Record a blocked request (`"GET http://..."`), once, up to a limit."""
        if request not in self._blocked and len(self._blocked) < _MAX_BLOCKED:
            self._blocked.append(request)

    def take_proxy_blocked(self) -> list[str]:
        """The requests the proxy refused since the last look (recorded too)."""
        refused = [r for r in self.proxy.drain() if not _is_browser_service(_host_port(r)[0])]
        for request in refused:
            self.note(request)
        return refused

    def take(self) -> list[str]:
        """The requests blocked since the last call, for an observation.

        A `CONNECT host:port` is left out when a request to that host and port is listed too
        (Chromium opens a tunnel ahead of a link it is about to follow).
        """
        self.take_proxy_blocked()
        blocked, self._blocked = self._blocked, []
        requested = {_host_port(r) for r in blocked if not r.startswith("CONNECT ")}
        return [r for r in blocked if not (r.startswith("CONNECT ") and _host_port(r) in requested)]

    async def _guard_request(self, route: Route) -> None:
        request = route.request
        if self.allows(request.url):
            await route.continue_()
            return
        self.note(f"{request.method} {request.url}")
        # an aborted navigation leaves the page as it was (no browser error page)
        await route.abort("aborted" if request.is_navigation_request() else "blockedbyclient")

    async def _guard_socket(self, socket: WebSocketRoute) -> None:
        if self.allows(socket.url):
            socket.connect_to_server()
        else:
            self.note(f"WebSocket {socket.url}")
            await socket.close(code=1008, reason="origin not allowed")


def _host_port(request: str) -> tuple[str, int | None]:
    """The host and port a blocked request (`"GET http://..."`, `"CONNECT host:port"`) went to."""
    method, _, target = request.partition(" ")
    parts = urlsplit(f"//{target}" if method == "CONNECT" else target)
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        port = None
    return (parts.hostname or ""), port


def _is_browser_service(host: str) -> bool:
    return any(host == d or host.endswith("." + d) for d in _BROWSER_SERVICE_DOMAINS)
