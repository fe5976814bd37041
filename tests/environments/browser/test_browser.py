"""BrowserEnvironment against a real Chromium and a local HTTP server."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from tapeagents.environments.browser import (
    BrowserEnvironment,
    Check,
    Click,
    Fill,
    GoBack,
    Goto,
    MiniWoBServer,
    PageObservation,
    Press,
    Scroll,
    SelectOption,
    parse_snapshot,
)

from tapeagents import ErrorObservation, Tape, ToolCall
from tapeagents.environment import observe
from tapeagents.store import TapeStore

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(pages: MiniWoBServer) -> AsyncIterator[BrowserEnvironment]:
    async with BrowserEnvironment(allowed_origins=[pages.origin], action_timeout=2.0) as env:
        yield env


async def act(env: BrowserEnvironment, tape: Tape[Any, Any], action: Any) -> PageObservation:
    """Append `action` and its observation, as the run loop does; return the observation."""
    tape.append(action)
    observation = await observe(env, action, tape)
    tape.append(observation)
    assert isinstance(observation, PageObservation), observation
    return observation


def ref(observation: PageObservation, role: str, name: str = "") -> str:
    for element in parse_snapshot(observation.snapshot).walk():
        if element.role == role and element.name.startswith(name) and element.ref:
            return element.ref
    raise AssertionError(f"no {role} {name!r} in\n{observation.snapshot}")


async def test_first_step_shows_the_page_and_the_goal(
    env: BrowserEnvironment, pages: MiniWoBServer
) -> None:
    tape = await env.start_tape("Sign up as Ada.", url=f"{pages.origin}/form.html")
    page = tape.last
    assert isinstance(page, PageObservation)
    assert (page.title, page.goal, page.error) == ("Form", "Sign up as Ada.", None)
    assert 'heading "Sign up" [level=1] [ref=e' in page.snapshot
    assert "Task: Sign up as Ada." in page.llm_text()


async def test_fill_select_check_and_click(env: BrowserEnvironment, pages: MiniWoBServer) -> None:
    tape = await env.start_tape(url=f"{pages.origin}/form.html")
    first = tape.last
    assert isinstance(first, PageObservation)
    await act(env, tape, Fill(ref=ref(first, "textbox", "Name"), text="Ada"))
    await act(env, tape, SelectOption(ref=ref(first, "combobox"), option="Green"))
    await act(env, tape, Check(ref=ref(first, "checkbox", "News")))
    page = await act(env, tape, Click(ref=ref(first, "button", "Send")))
    assert page.error is None
    assert "Ada/g/true" in page.snapshot
    wrong = await act(env, tape, SelectOption(ref=ref(first, "combobox"), option="Blue"))
    assert wrong.error == "No option 'Blue' in this list; its options are: 'Red', 'Green'."


async def test_navigation_keys_and_scrolling(env: BrowserEnvironment, pages: MiniWoBServer) -> None:
    tape = await env.start_tape(url=f"{pages.origin}/form.html")
    first = tape.last
    assert isinstance(first, PageObservation)
    second = await act(env, tape, Click(ref=ref(first, "link", "Second page")))
    assert (second.title, second.url) == ("Second", f"{pages.origin}/second.html")
    back = await act(env, tape, GoBack())
    assert back.title == "Form"
    typed = await act(env, tape, Press(ref=ref(back, "textbox", "Name"), key="X"))
    assert typed.error is None and 'textbox "Name" [active]' in typed.snapshot
    assert (await act(env, tape, Scroll(direction="down"))).error is None
    assert (await act(env, tape, Scroll(ref=ref(back, "button", "Send")))).error is None


async def test_an_action_on_a_missing_element_is_an_error_observation(
    env: BrowserEnvironment, pages: MiniWoBServer
) -> None:
    tape = await env.start_tape(url=f"{pages.origin}/form.html")
    unknown = await act(env, tape, Click(ref="e999"))
    assert unknown.error is not None and unknown.error.startswith("No element e999")
    assert unknown.title == "Form"  # the page is still there, and shown
    absent = await act(env, tape, Click(ref="css=#no-such-button"))
    assert absent.error is not None and "Timed out after 2 s" in absent.error
    # an element that was shown but has gone since
    first = tape.steps[0]
    assert isinstance(first, PageObservation)
    send = ref(first, "button", "Send")
    await act(env, tape, Goto(url=f"{pages.origin}/second.html"))
    gone = await act(env, tape, Click(ref=send))
    assert gone.error is not None and f"element {send}" in gone.error


async def test_other_origins_are_blocked_and_reported(
    env: BrowserEnvironment, pages: MiniWoBServer
) -> None:
    tape = await env.start_tape(url=f"{pages.origin}/form.html")
    page = await act(env, tape, Goto(url="https://example.com/"))
    assert page.error is not None and "https://example.com/ was blocked" in page.error
    assert page.blocked == ["GET https://example.com/"]
    assert page.title == "Form"  # still on the allowed page
    link = await act(env, tape, Click(ref=ref(page, "link", "Outside")))
    assert link.blocked == ["GET https://example.com/"]
    assert link.url.startswith(pages.origin)
    # requests a page makes by itself (an image) are blocked too
    second = await act(env, tape, Goto(url=f"{pages.origin}/second.html"))
    assert second.error is None
    assert second.blocked == ["GET https://tracker.example.net/pixel.png"]
    again = await act(env, tape, Scroll())
    assert again.blocked == []  # reported once


async def test_long_pages_are_trimmed_with_a_marker(
    env: BrowserEnvironment, pages: MiniWoBServer
) -> None:
    env.max_snapshot_chars = 1000
    try:
        tape = await env.start_tape(url=f"{pages.origin}/long.html")
    finally:
        env.max_snapshot_chars = 20_000
    page = tape.last
    assert isinstance(page, PageObservation)
    assert len(page.snapshot) < 1200
    assert "Paragraph number 0" in page.snapshot
    assert "[... page trimmed:" in page.snapshot.splitlines()[-1]


async def test_screenshots_are_data_urls_stored_once(
    env: BrowserEnvironment, pages: MiniWoBServer
) -> None:
    env.screenshots = True
    try:
        tape = await env.start_tape(url=f"{pages.origin}/form.html")
    finally:
        env.screenshots = False
    page = tape.last
    assert isinstance(page, PageObservation) and page.screenshot is not None
    assert page.screenshot.startswith("data:image/png;base64,iVBOR")
    assert "screenshot" not in page.llm_text() and "base64" not in page.llm_text()
    with TapeStore("sqlite://") as store:
        store.save(tape)
        blobs = store.stats()["blobs"]
        tape.append(page.model_copy())  # the same picture again costs no second blob
        store.append_steps(tape.id, 1, [tape.steps[1]])
        assert store.get(tape.id).steps[1] == page
        assert store.stats()["blobs"] == blobs


async def test_actions_of_other_kinds_get_an_error_observation(env: BrowserEnvironment) -> None:
    tape: Tape[Any, Any] = Tape()
    call = ToolCall(name="search", arguments={"q": "x"})
    tape.append(call)
    observation = await observe(env, call, tape)
    assert isinstance(observation, ErrorObservation)
    assert "cannot perform actions of kind 'tool_call'" in observation.error


async def test_a_crashed_browser_is_restarted_and_the_tape_says_so(
    pages: MiniWoBServer,
) -> None:
    async with BrowserEnvironment(allowed_origins=[pages.origin]) as env:
        tape = await env.start_tape(url=f"{pages.origin}/form.html")
        first = tape.last
        assert isinstance(first, PageObservation) and env.browser is not None
        cdp = await env.browser.new_browser_cdp_session()
        info = await cdp.send("SystemInfo.getProcessInfo")
        (pid,) = [p["id"] for p in info["processInfo"] if p["type"] == "browser"]
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.1)

        page = await act(env, tape, Fill(ref=ref(first, "textbox", "Name"), text="Ada"))
        assert page.notice is not None and "crashed" in page.notice
        assert "was restarted" in page.notice and "not performed" in page.notice
        assert page.title == "Form" and env.restarts == 1
        # the tape goes on in the new browser
        after = await act(env, tape, Fill(ref=ref(page, "textbox", "Name"), text="Ada"))
        assert (after.error, after.notice) == (None, None)
        assert 'textbox "Name" [active]' in after.snapshot
