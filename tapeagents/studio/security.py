"""Who may talk to the studio: host names, an optional access token, and cross-site posts.

The studio serves a developer's tapes (which hold prompts, web pages and tool output) and can
run agents, so it guards every request:

- **Host**: by default only loopback names (`127.0.0.1`, `localhost`, `::1`) are answered, so a
  web page cannot reach the studio through DNS rebinding.
- **Token** (optional, required by the command line off loopback): a request must carry it as
  `Authorization: Bearer T`, an `X-Studio-Token` header, or the `tapeagents_studio` cookie. A
  page opened with `?token=T` gets the cookie and is redirected to the same URL without it.
- **Posts**: every state-changing request is a POST whose `Origin` (or `Referer`) must be the
  studio itself, and whose form carries the app's CSRF token (checked in `Studio.read_form`).
- **Headers**: a strict Content-Security-Policy (scripts and styles only from the studio, images
  also from `data:`), no framing, no sniffing, no referrer.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

__all__ = ["COOKIE", "LOOPBACK_HOSTS", "Guard", "is_loopback"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "tapeagents_studio"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

CSP = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (so nothing else on the network can connect)."""
    import ipaddress

    name = host.strip("[]").lower()
    if name in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    """`example.org` from `example.org:8765`, `::1` from `[::1]:8765`."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0].lower()
    name = host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header
    return name.lower()


class Guard:
    """ASGI middleware that applies the rules of this module's docstring to every request.

    Args:
        app: The application to guard.
        token: The access token, or None when none is needed (loopback only).
        allowed_hosts: Host names to answer; None means loopback names when there is no token
            and any name when there is one (the token protects the studio then).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None = None,
        allowed_hosts: Iterable[str] | None = None,
    ) -> None:
        self.app = app
        self.token = token
        if allowed_hosts is None:
            self.allowed_hosts: frozenset[str] | None = None if token else LOOPBACK_HOSTS
        else:
            self.allowed_hosts = frozenset(h.strip("[]").lower() for h in allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if self.allowed_hosts is not None and _host_name(host) not in self.allowed_hosts:
            await _plain(
                send,
                400,
                f"The studio does not answer for host {host!r}; open it as http://127.0.0.1 "
                "or http://localhost (or start it with --host and --token).",
            )
            return
        if self.token is not None:
            outcome = self._authenticate(scope, headers)
            if outcome == "redirect":
                await self._set_cookie_and_redirect(scope, send)
                return
            if outcome == "refused":
                await _plain(
                    send,
                    401,
                    "This studio needs its access token: open the link that `tapeagents studio` "
                    "printed (it ends with ?token=...), or send 'Authorization: Bearer TOKEN'.",
                )
                return
        if scope["method"] not in SAFE_METHODS and not _same_origin(headers, host):
            await _plain(
                send,
                403,
                "Cross-site request refused: the studio only accepts changes from its own pages.",
            )
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _authenticate(self, scope: Scope, headers: dict[str, str]) -> str:
        """ "ok", "redirect" (a valid ?token= to turn into a cookie) or "refused"."""
        assert self.token is not None
        offered: list[str] = []
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            offered.append(authorization[7:].strip())
        if "x-studio-token" in headers:
            offered.append(headers["x-studio-token"])
        if "cookie" in headers:
            cookie: SimpleCookie = SimpleCookie()
            try:
                cookie.load(headers["cookie"])
            except Exception:  # a malformed cookie header is just not a token
                cookie = SimpleCookie()
            if COOKIE in cookie:
                offered.append(cookie[COOKIE].value)
        if any(self._matches(value) for value in offered):
            return "ok"
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if scope["method"] == "GET" and self._matches(query.get("token", "")):
            return "redirect"
        return "refused"

    def _matches(self, value: str) -> bool:
        assert self.token is not None
        return hmac.compare_digest(value.encode(), self.token.encode())

    async def _set_cookie_and_redirect(self, scope: Scope, send: Send) -> None:
        assert self.token is not None
        query = [
            (k, v)
            for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"), True)
            if k != "token"
        ]
        location = _same_site_path(scope.get("root_path", "") + scope["path"])
        if query:
            location += "?" + urlencode(query)
        cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location.encode("latin-1")),
                    (b"set-cookie", cookie.encode("latin-1")),
                    (b"cache-control", b"no-store"),
                    *SECURITY_HEADERS,
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})


def _same_site_path(path: str) -> str:
    """`path` percent-encoded for a `Location` header, kept on this site.

    A path that starts with `//` (or `/\\`) would name another host in a redirect.
    """
    encoded = quote(path, safe="/:@!$&'()*+,;=-._~")
    return "/" + encoded.lstrip("/")


def _same_origin(headers: dict[str, str], host: str) -> bool:
    """Whether a state-changing request comes from the studio's own pages.

    Browsers send `Origin` with every POST; `Referer` is the fallback. A request with neither
    comes from a program (curl, a test client), which the CSRF token still has to pass.
    """
    source = headers.get("origin") or headers.get("referer")
    if source is None:
        return True
    if source == "null":
        return False
    return urlsplit(source).netloc.lower() == host.lower()


async def _plain(send: Send, status: int, text: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                *SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": text.encode()})
