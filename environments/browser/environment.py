"""`BrowserEnvironment`: a real Chromium, driven through Playwright's async API.

One browser serves all tapes; each tape gets its own browser context (cookies, storage and
cache of its own) the first time it acts. Every action gets exactly one `PageObservation`:
the page after the action, or an error that says why it failed (no such element, a timeout,
an origin that is not allowed). If the browser dies, it is started again and the observation
says so; the action is not retried.

Safety: requests go out only to the allowed origins (by default none: pages the environment
serves itself, such as MiniWoB++, add their own origin). Two guards hold the lock: a route on
each context aborts the requests the page makes (so a blocked navigation leaves the page where
it was), and every context reaches the network only through its own `GuardProxy`, which checks
each request Chromium sends, redirect hops and prefetches included. Blocked requests are listed
in the next observation. Downloads and service workers are off, WebRTC sends nothing outside the
proxy, and Chromium runs headless with its background networking disabled.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tapeagents.environment import Environment
from tapeagents.errors import UsageError
from tapeagents.steps import Action, Observation
from tapeagents.tape import Tape

from .chromium import CHROMIUM_FLAGS, find_chromium
from .lock import NO_NETWORK_SCHEMES, ContextLock, origin_of
from .proxy import GuardProxy
from .snapshot import RefMap, trim_snapshot
from .steps import (
    BrowserAction,
    Check,
    Click,
    Fill,
    GoBack,
    Goto,
    PageObservation,
    Press,
    Scroll,
    SelectOption,
)

if TYPE_CHECKING:
    from playwright.async_api import (
        Browser,
        BrowserContext,
        Page,
        Playwright,
    )

__all__ = ["CHROMIUM_FLAGS", "BrowserEnvironment", "find_chromium", "origin_of"]

_OUR_REF = re.compile(r"^(?:f\d+)?e\d+$")
_COVERED = re.compile(r"- (<.*?>.*?) intercepts pointer events")
_SCROLL = "(sign) => window.scrollBy(0, sign * window.innerHeight * 0.8)"


@dataclass
class _Session:
    """The browser context and page of one tape."""

    context: BrowserContext
    page: Page
    lock: ContextLock
    refs: RefMap = field(default_factory=RefMap)
    notices: list[str] = field(default_factory=list)
    shown: bool = False
    """Whether the agent has seen this page's references (in an observation of this session)."""
    task: str | None = None
    """For task environments: the task this page is loaded with."""
    goal: str | None = None
    done: bool = False


class _BrowserGone(Exception):
    """The browser or the page died under an action."""


class BrowserEnvironment(Environment):
    """A Chromium browser that performs `BrowserAction`s and answers with `PageObservation`s.

    Use it as an async context manager, or call `aclose()`; the browser starts on first use.

    Args:
        allowed_origins: Origins (`http://127.0.0.1:8000`) the browser may request; others are
            blocked and reported.
        start_url: The page a tape's tab opens with.
        chromium: Path of the Chromium executable (default: `$TAPEAGENTS_CHROMIUM`, then the
            system's `chromium`).
        headless: Run without a window.
        action_timeout: Seconds an action waits for its element before it fails.
        navigation_timeout: Seconds a page load may take.
        max_snapshot_chars: Longer page snapshots are trimmed, with a marker saying so.
        screenshots: Attach a PNG screenshot to every observation.
        viewport: Width and height of the page in pixels.

    Example:
        >>> async def main():
        ...     async with BrowserEnvironment() as env:
        ...         tape = await env.start_tape("Read the page.", url="data:text/html,<h1>Hi</h1>")
        ...         print(tape.last.snapshot)
    """

    def __init__(
        self,
        *,
        allowed_origins: Sequence[str] = (),
        start_url: str = "about:blank",
        chromium: str | None = None,
        headless: bool = True,
        action_timeout: float = 2.0,
        navigation_timeout: float = 10.0,
        max_snapshot_chars: int = 20_000,
        screenshots: bool = False,
        viewport: tuple[int, int] = (1280, 720),
    ) -> None:
        self.allowed_origins = {origin_of(origin) for origin in allowed_origins}
        self.start_url = start_url
        self.chromium = chromium
        self.headless = headless
        self.action_timeout = action_timeout
        self.navigation_timeout = navigation_timeout
        self.max_snapshot_chars = max_snapshot_chars
        self.screenshots = screenshots
        self.viewport = viewport
        self.restarts = 0
        """How many times the browser was started again after it died."""
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._sessions: dict[str, _Session] = {}
        self._launch_lock = asyncio.Lock()
        self._browser_proxy = GuardProxy(lambda url: False)
        """The browser's own proxy (for anything outside our contexts): it forwards nothing."""
        self._locks: set[ContextLock] = set()

    # --------------------------------------------------------------------- lifecycle

    @property
    def browser(self) -> Browser | None:
        """The Playwright `Browser`, once started (for inspection; prefer actions)."""
        return self._browser

    async def start(self) -> None:
        """Start Chromium now rather than on first use."""
        await self._ensure_browser()

    async def _ensure_browser(self, *, dead: Browser | None = None) -> Browser:
        """The running browser; launched on first use, and again when it died.

        Args:
            dead: A browser the caller saw fail; it is replaced even if Playwright has not
                noticed yet that it is gone.
        """
        async with self._launch_lock:
            browser = self._browser
            if browser is not None and browser.is_connected() and browser is not dead:
                return browser
            if browser is not None:  # it died: forget it and everything in it
                self._sessions.clear()
                self._forget_idle()
                await self._close_locks()
                self.restarts += 1
                self._browser = None
                try:
                    await browser.close()
                except Exception:  # already gone
                    pass
            if self._playwright is None:
                try:
                    from playwright.async_api import async_playwright
                except ImportError:
                    raise UsageError(
                        "The browser environment needs Playwright: pip install "
                        "'tapeagents[browser]' (and a system Chromium; never `playwright install`)."
                    ) from None
                self._playwright = await async_playwright().start()
            await self._browser_proxy.start()
            self._browser = await self._playwright.chromium.launch(
                executable_path=find_chromium(self.chromium),
                headless=self.headless,
                args=list(CHROMIUM_FLAGS),
                proxy={"server": self._browser_proxy.url, "bypass": "<-loopback>"},
                handle_sigint=False,
                handle_sigterm=False,
                handle_sighup=False,
            )
            return self._browser

    def _forget_idle(self) -> None:
        """Drop pooled pages (subclasses that keep them override this)."""

    async def aclose(self) -> None:
        """Close every context, the browser and Playwright."""
        self._sessions.clear()
        self._forget_idle()
        browser, self._browser = self._browser, None
        if browser is not None:
            try:
                await browser.close()
            except Exception:  # already dead: nothing left to close
                pass
        playwright, self._playwright = self._playwright, None
        if playwright is not None:
            await playwright.stop()
        await self._close_locks()
        await self._browser_proxy.aclose()

    async def _close_locks(self) -> None:
        locks, self._locks = self._locks, set()
        for lock in locks:
            await lock.aclose()

    async def close_session(self, tape: Tape[Any, Any] | str) -> None:
        """Close the browser context of a tape (the next action of that tape opens a new one)."""
        tape_id = tape if isinstance(tape, str) else tape.id
        session = self._sessions.pop(tape_id, None)
        if session is not None:
            await self._release(session)

    async def _release(self, session: _Session) -> None:
        try:
            await session.context.close()
        except Exception:  # the browser may already be gone
            pass
        self._locks.discard(session.lock)
        await session.lock.aclose()

    # --------------------------------------------------------------------- sessions

    async def _new_session(self) -> _Session:
        """A fresh context behind its origin lock, with downloads off and one blank page."""
        from playwright.async_api import Error as PlaywrightError

        browser = await self._ensure_browser()
        try:
            context, lock = await self._new_context(browser)
        except PlaywrightError:  # it died before Playwright noticed: start it again, once
            browser = await self._ensure_browser(dead=browser)
            context, lock = await self._new_context(browser)
        context.set_default_timeout(self.action_timeout * 1000)
        context.set_default_navigation_timeout(self.navigation_timeout * 1000)
        await lock.guard(context)
        page = await context.new_page()
        session = _Session(context=context, page=page, lock=lock)

        def new_tab(new_page: Page) -> None:
            if new_page is not session.page:
                session.page = new_page
                session.notices.append("A new tab opened; actions now go to it.")

        context.on("page", new_tab)
        return session

    async def _new_context(self, browser: Browser) -> tuple[BrowserContext, ContextLock]:
        lock = await ContextLock(self.is_allowed).start()
        try:
            context = await browser.new_context(
                accept_downloads=False,
                service_workers="block",
                viewport={"width": self.viewport[0], "height": self.viewport[1]},
                proxy=lock.proxy_settings,
            )
        except BaseException:
            await lock.aclose()
            raise
        self._locks.add(lock)
        return context, lock

    async def _open_session(self, tape: Tape[Any, Any]) -> _Session:
        """The session a tape starts with: a new context showing the tape's start page."""
        session = await self._new_session()
        url = _start_url(tape) or self.start_url
        if url != "about:blank":
            error = await self._goto(session, url)
            if error:
                session.notices.append(f"Could not open the start page: {error}")
        return session

    async def _session(self, tape: Tape[Any, Any]) -> _Session:
        session = self._sessions.get(tape.id)
        if session is None:
            session = await self._open_session(tape)
            self._sessions[tape.id] = session
        return session

    def is_allowed(self, url: str) -> bool:
        """Whether the browser may request `url` (pages without network access always may)."""
        scheme = url.split(":", 1)[0].lower()
        return scheme in NO_NETWORK_SCHEMES or origin_of(url) in self.allowed_origins

    # --------------------------------------------------------------------- tapes

    async def start_tape(
        self, goal: str = "", *, url: str | None = None, context: Any = None
    ) -> Tape[Any, Any]:
        """A new tape whose first step shows the page at `url` (default `start_url`).

        Args:
            goal: The instruction for the agent; shown on the first observation.
            url: The page to open.
            context: The tape's context (default: `{"goal": goal, "url": url}`; a dict's "url"
                is where the tab opens again if the browser has to be restarted).
        """
        url = url or self.start_url
        if context is None:
            context = {"goal": goal, "url": url}
        tape: Tape[Any, Any] = Tape(context=context)
        session = await self._new_session()
        self._sessions[tape.id] = session
        error = await self._goto(session, url) if url != "about:blank" else None
        tape.append(await self._observation(session, tape, error=error, goal=goal or None))
        return tape

    # --------------------------------------------------------------------- acting

    async def react(self, action: Action, tape: Tape[Any, Any]) -> Observation:
        if not isinstance(action, BrowserAction):
            return await super().react(action, tape)
        from playwright.async_api import Error as PlaywrightError

        session = self._sessions.get(tape.id)
        try:
            if session is not None and not self._alive(session):
                raise _BrowserGone("The browser is no longer running.")
            session = await self._session(tape)
            refused = await self._refuse(session, tape, action)
            if refused is not None:
                return refused
            if not session.shown:
                # a tape resumed (or replayed) in a new session: number the elements as the
                # agent saw them, so its references point at the same elements
                session.refs.rewrite(await session.page.aria_snapshot(mode="ai"))
                session.shown = True
            error = await self._perform(session, action)
            return await self._observation(session, tape, error=error)
        except (_BrowserGone, PlaywrightError) as gone:
            if session is not None and self._alive(session) and not _looks_gone(gone):
                raise  # a genuine Playwright failure, not a crash: observe() records it
            return await self._recover(tape, gone)

    def _alive(self, session: _Session) -> bool:
        browser = self._browser
        return browser is not None and browser.is_connected() and not session.page.is_closed()

    async def _recover(self, tape: Tape[Any, Any], cause: Exception) -> PageObservation:
        """Start the browser (or the tape's page) again after a crash, and say so."""
        old = self._sessions.pop(tape.id, None)
        if old is not None:
            await self._release(old)
        session = await self._session(tape)  # relaunches the browser when it is gone
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        notice = (
            f"The browser crashed ({reason}) and was restarted. The action was not performed; "
            "the page was opened again from the start."
        )
        return await self._observation(session, tape, notice=notice)

    async def _refuse(
        self, session: _Session, tape: Tape[Any, Any], action: BrowserAction
    ) -> PageObservation | None:
        """An observation that refuses the action, or None to perform it (task hook)."""
        return None

    async def _perform(self, session: _Session, action: BrowserAction) -> str | None:
        """Do the action; return what went wrong, or None."""
        from playwright.async_api import Error as PlaywrightError
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        page = session.page
        try:
            if isinstance(action, Goto):
                return await self._goto(session, action.url)
            if isinstance(action, GoBack):
                response = await page.go_back(wait_until="domcontentloaded")
                if response is None and page.url in ("about:blank", ""):
                    return "There is no previous page."
                return None
            if isinstance(action, Scroll) and action.ref is None:
                sign = -1 if action.direction == "up" else 1
                await page.evaluate(_SCROLL, sign)
                return None
            ref = getattr(action, "ref", None)
            locator = None
            if ref is not None:
                locator, problem = self._locate(session, ref)
                if locator is None:
                    return problem
            if isinstance(action, Click):
                await _click(locator)
            elif isinstance(action, Fill):
                await locator.fill(action.text)
            elif isinstance(action, SelectOption):
                problem = await _select(locator, action.option)
                if problem:
                    return problem
            elif isinstance(action, Check):
                await locator.set_checked(action.checked)
            elif isinstance(action, Press):
                if locator is not None:
                    await locator.press(action.key)
                else:
                    await page.keyboard.press(action.key)
            elif isinstance(action, Scroll):
                await locator.scroll_into_view_if_needed()
            else:
                return f"{type(self).__name__} cannot perform {action.kind!r} actions."
            await self._settle(page)
            return None
        except PlaywrightTimeout as timeout:
            if not self._alive(session):
                raise _BrowserGone("The browser stopped during the action.") from None
            covering = _COVERED.search(str(timeout))
            if covering:
                return (
                    f"Could not {_verb(action)} {ref}: another element covers it "
                    f"({covering.group(1)[:200]}). Try another element or scroll."
                )
            what = f"element {ref}" if ref else "the page"
            return (
                f"Timed out after {self.action_timeout:g} s waiting for {what} to be ready "
                f"({_verb(action)}): it may be hidden, disabled, covered or gone. Use a reference "
                "from the latest page snapshot."
            )
        except PlaywrightError as error:
            if not self._alive(session) or _looks_gone(error):
                raise _BrowserGone(_first_line(error)) from None
            return f"Could not {_verb(action)}: {_first_line(error)}"

    def _locate(self, session: _Session, ref: str) -> tuple[Any, str | None]:
        """A Playwright locator for a reference of ours (or a selector), or the problem."""
        if _OUR_REF.match(ref):
            theirs = session.refs.resolve(ref)
            if theirs is None:
                return None, (
                    f"No element {ref} in the page snapshots seen so far; use a reference "
                    "([ref=eN]) from the latest page snapshot."
                )
            return session.page.locator(f"aria-ref={theirs}"), None
        return session.page.locator(ref), None

    async def _goto(self, session: _Session, url: str) -> str | None:
        if not self.is_allowed(url):
            session.lock.note(f"GET {url}")
            allowed = ", ".join(sorted(self.allowed_origins)) or "none"
            return (
                f"Navigation to {url} was blocked: its origin {origin_of(url)} is not allowed "
                f"(allowed origins: {allowed})."
            )
        from playwright.async_api import Error as PlaywrightError

        try:
            await session.page.goto(url, wait_until="load")
        except PlaywrightError as error:
            if not self._alive(session):
                raise _BrowserGone(_first_line(error)) from None
            blocked = session.lock.take_proxy_blocked()
            if blocked:  # it redirected to an origin that is not allowed
                allowed = ", ".join(sorted(self.allowed_origins)) or "none"
                return (
                    f"Navigation to {url} was blocked: it led to {blocked[-1].split(' ', 1)[-1]}, "
                    f"whose origin is not allowed (allowed origins: {allowed})."
                )
            return f"Could not open {url}: {_first_line(error)}"
        return None

    async def _settle(self, page: Page) -> None:
        """Let a navigation the action started reach the point where the page can be read."""
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        try:
            await page.wait_for_load_state("domcontentloaded")
        except PlaywrightTimeout:
            pass  # a slow page: the snapshot shows what is there

    # --------------------------------------------------------------------- observing

    async def _task_fields(self, session: _Session, tape: Tape[Any, Any]) -> dict[str, Any]:
        """Task state (reward, done) to put on an observation (task hook)."""
        return {}

    async def _observation(
        self,
        session: _Session,
        tape: Tape[Any, Any],
        *,
        error: str | None = None,
        notice: str | None = None,
        goal: str | None = None,
    ) -> PageObservation:
        """The page as the agent sees it now."""
        page = session.page
        fields = await self._task_fields(session, tape)
        raw = await page.aria_snapshot(mode="ai")
        snapshot = trim_snapshot(session.refs.rewrite(raw), self.max_snapshot_chars)
        session.shown = True
        notices = [*session.notices, *([notice] if notice else [])]
        session.notices.clear()
        blocked = session.lock.take()
        screenshot = None
        if self.screenshots:
            png = await page.screenshot(type="png")
            screenshot = "data:image/png;base64," + base64.b64encode(png).decode()
        return PageObservation(
            url=page.url,
            title=await page.title(),
            snapshot=snapshot,
            error=error,
            blocked=blocked,
            notice=" ".join(notices) or None,
            goal=goal,
            screenshot=screenshot,
            **fields,
        )


_VISIBLE_POINT = """(el) => {
  const box = el.getBoundingClientRect();
  for (const fy of [0.5, 0.25, 0.75, 0.1, 0.9]) {
    for (const fx of [0.5, 0.25, 0.75, 0.1, 0.9]) {
      const hit = document.elementFromPoint(box.left + box.width * fx, box.top + box.height * fy);
      if (hit && (hit === el || el.contains(hit))) {
        return fx === 0.5 && fy === 0.5 ? null : {x: box.width * fx, y: box.height * fy};
      }
    }
  }
  return null;
}"""


async def _click(locator: Any) -> None:
    """Click an element at its centre, or where it shows if another element covers the centre.

    A person clicks the visible part of a partly covered button; Playwright's plain click only
    tries the centre and waits for it to clear.
    """
    point = await locator.evaluate(_VISIBLE_POINT)
    if point is None:
        await locator.click()
    else:
        await locator.click(position=point)


async def _select(locator: Any, option: str) -> str | None:
    """Choose an option by its label (or value); say which options exist if none matches."""
    options: list[list[str]] | None = await locator.evaluate(
        "(el) => el.options ? Array.from(el.options, (o) => [o.label || o.text, o.value]) : null"
    )
    if options is None:
        return "Could not select an option: the element is not a drop-down list."
    wanted = option.strip().casefold()
    for label, value in options:
        if option in (label, value) or label.strip().casefold() == wanted:
            await locator.select_option(value=value)
            return None
    labels = ", ".join(repr(label) for label, _ in options[:30]) or "none"
    return f"No option {option!r} in this list; its options are: {labels}."


def _start_url(tape: Tape[Any, Any]) -> str | None:
    """The page a tape started on, from its context (a dict or a model with a `url`)."""
    context = tape.context
    url = context.get("url") if isinstance(context, dict) else getattr(context, "url", None)
    return url if isinstance(url, str) else None


def _looks_gone(error: Exception) -> bool:
    """Whether a Playwright error says the page or the browser died (not the action failed)."""
    text = str(error)
    return isinstance(error, _BrowserGone) or "has been closed" in text or "crashed" in text


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _verb(action: BrowserAction) -> str:
    return {
        "browser_click": "click",
        "browser_fill": "fill in",
        "browser_select": "select an option",
        "browser_check": "check",
        "browser_press": "press a key",
        "browser_scroll": "scroll",
        "browser_goto": "open the page",
        "browser_back": "go back",
    }.get(action.kind, action.kind)
