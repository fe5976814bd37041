"""The studio in a real browser: Debian's Chromium through Playwright, against a live server.

One browser and one server for the module. The workflow test walks what a developer does when
an agent went wrong: find the tape, read the prompt behind a step, fork, edit, resume, and find
the new tape next to its parent. The escaping test loads a tape made of hostile HTML everywhere
and checks that nothing in it became markup or ran.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tapeagents.render.html import tape_html
from tapeagents.store import TapeStore
from tests.studio.conftest import AGENTS
from tests.studio.data import browsing_tape, calc_tape, hostile_tape
from tests.studio.server import live_studio

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "artifacts"
SAFE_SRC = re.compile(r"data:image/(png|jpeg|gif|webp);base64,")

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make test installs it)"
)


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    store = TapeStore(f"sqlite:///{tmp_path_factory.mktemp('studio') / 'tapes.db'}")
    tapes = {
        "calc": calc_tape(store),
        "browse": browsing_tape(store),
        "hostile": hostile_tape(store),
    }
    with live_studio(store, agents=AGENTS) as url:
        yield {"url": url, "store": store, "tapes": tapes}
    store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors: {errors}"


def tape_id_of(page: Any) -> str:
    found = re.search(r"/tapes/([0-9a-f]{32})", page.url)
    assert found, page.url
    return found.group(1)


def test_fork_edit_resume_workflow(studio: dict[str, Any], page: Any) -> None:
    url, store, calc = studio["url"], studio["store"], studio["tapes"]["calc"]

    # the list: find the calculator's tape and open it
    page.goto(url + "/")
    page.click(f'a[href="/tapes/{calc.id}"]')
    page.wait_for_selector("#step-4[data-kind=final_answer]")

    # the prompt behind the model's first step: system prompt, question, tools, raw output
    page.click("#step-1 details.call > summary")
    call = page.locator("#step-1 details.call[data-ready]")
    call.wait_for()
    text = call.inner_text()
    assert "You are a careful calculator." in text and "What is 2 + 3?" in text
    assert "add" in text and "I will add 2 and 3 with the tool." in text

    # fork after the question
    page.locator("#step-0").get_by_role("button", name="Fork after").click()
    page.wait_for_selector(".flash-ok")
    fork_id = tape_id_of(page)
    assert fork_id != calc.id and page.locator(".step").count() == 1
    assert page.get_attribute("#parent-link", "href") == f"/tapes/{calc.id}"

    # edit the question: a wrong edit is refused with the validation message, a good one forks
    page.locator("#step-0").get_by_role("link", name="Edit").click()
    page.fill("#step-json", '{"kind": "user", "contents": "What is 20 + 22?"}')
    page.get_by_role("button", name="Save as a fork").click()
    error = page.locator("#edit-error").inner_text()
    assert "content: Field required" in error and "contents: Extra inputs" in error
    page.fill("#step-json", '{"kind": "user", "content": "What is 20 + 22?"}')
    assert page.inner_text("#json-status") == "valid JSON"
    page.get_by_role("button", name="Save as a fork").click()
    page.wait_for_selector(".flash-ok")
    edited_id = tape_id_of(page)
    assert page.inner_text("#step-0 .step-body") == "What is 20 + 22?"
    assert page.get_attribute("#parent-link", "href") == f"/tapes/{fork_id}"

    # resume with the (slow, scripted) calculator; the steps arrive live
    page.select_option("#r-agent", "slow")
    page.get_by_role("button", name="Resume this tape").click()
    page.wait_for_selector("#step-4[data-kind=final_answer]")
    assert "42" in page.inner_text("#step-4")
    page.wait_for_selector("#tape-status .st-stopped")
    assert page.locator(".step.fresh").count() >= 2  # inserted by server-sent events
    assert page.inner_text("#run-end").startswith("The run finished: stopped.")
    assert store.get(edited_id).kinds() == [
        "user",
        "reasoning",
        "tool_call",
        "tool_result",
        "final_answer",
    ]

    # the new tape is in the list, with its parent link
    page.goto(url + "/")
    row = page.locator(f'tr:has(a[href="/tapes/{edited_id}"])')
    assert row.locator("td.parent a").get_attribute("href") == f"/tapes/{fork_id}"
    assert row.locator(".status").inner_text() == "stopped"
    row.locator("td.parent a").click()
    assert tape_id_of(page) == fork_id
    assert page.locator("#lineage li.current").count() == 1
    assert page.locator(f'#lineage a[href="/tapes/{edited_id}"]').count() == 1


def test_tape_view_screenshot(studio: dict[str, Any], page: Any) -> None:
    """The browsing tape with its first prompt open, saved for people to look at."""
    browse = studio["tapes"]["browse"]
    page.goto(f"{studio['url']}/tapes/{browse.id}")
    page.keyboard.press("j")  # keys walk the steps: j, j is step 1; o opens its prompt
    page.wait_for_function("location.hash === '#step-0'")
    page.keyboard.press("j")
    page.wait_for_function("location.hash === '#step-1'")
    page.keyboard.press("o")
    page.wait_for_selector("#step-1 details.call[data-ready]")
    page.evaluate("window.scrollTo(0, 0)")
    assert page.eval_on_selector("#step-3 .images img", "img => img.naturalWidth") == 360
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "studio-tape.png"), full_page=True)
    assert (ARTIFACTS / "studio-tape.png").stat().st_size > 20_000


def assert_inert(page: Any, dialogs: list[str]) -> None:
    """Nothing from the tape became markup or ran."""
    assert page.evaluate("window.__pwned") is None
    assert dialogs == []
    assert page.locator("#evil-link").count() == 0
    assert page.locator("a[href^='javascript:' i]").count() == 0
    assert page.locator("svg, iframe, object, embed").count() == 0
    assert page.locator("[onerror], [onload], [onclick]").count() == 0
    for src in page.eval_on_selector_all("img", "imgs => imgs.map(i => i.getAttribute('src'))"):
        assert SAFE_SRC.match(src), src
    assert page.evaluate("getComputedStyle(document.body).display") != "none"


def test_hostile_html_stays_text(studio: dict[str, Any], page: Any) -> None:
    url, store = studio["url"], studio["store"]
    hostile, calc = studio["tapes"]["hostile"], studio["tapes"]["calc"]
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    for path in [
        "/",
        f"/diff?a={hostile.id}&b={calc.id}",
        f"/tapes/{hostile.id}/steps/4/edit",
        "/calls/studio-test-hostile-call",
        f"/tapes/{hostile.id}",
    ]:
        page.goto(url + path)
        assert_inert(page, dialogs)
    # open every fold and the LLM call: the lazily loaded prompt is escaped too
    page.click("#step-1 details.call > summary")
    page.wait_for_selector("#step-1 details.call[data-ready]")
    page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")
    assert "<script>window.__pwned = 'script'</script>" in page.inner_text("#step-0")
    assert "[image/svg+xml, 88 bytes] not shown" in page.inner_text("#step-5")
    assert_inert(page, dialogs)

    # the notebook view has no CSP to fall back on: its escaping alone must hold
    page.goto("about:blank")  # a document without the studio's Content-Security-Policy
    page.set_content(tape_html(hostile, store.llm_calls_of(hostile)))
    assert page.eval_on_selector(".ta", "e => getComputedStyle(e).fontSize") == "14px"  # inline CSS
    page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")
    assert page.locator(".step").count() == len(hostile)
    assert_inert(page, dialogs)
