"""Hostile ids, names and contents in every studio page, in Chromium with the CSP turned off.

The studio's Content-Security-Policy would stop an inline script that slipped through, so this
test turns it off (`bypass_csp` on the browser context, a test-only switch) and checks that the
escaping alone holds: the tapes' ids, LLM-call ids, agent names, tags, statuses, step contents,
annotations, context and metadata are all payloads that set `window.__pwned`, log "PWNED" or
open a dialog. A crawler follows every link of the studio from the tape list, opens every
folded section (which loads the LLM calls' fragments), posts the forms, and follows a live run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from tapeagents import AssistantMessage, Tape, TapeMetadata, ToolCall, ToolResult, UserMessage
from tapeagents.llms import LLMCall, LLMOutput, Prompt, ToolCallRequest
from tapeagents.render.html import tape_html, url_part
from tapeagents.steps import StepMetadata, load_step, new_id
from tapeagents.store import TapeStore
from tests.studio.server import live_studio

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make test installs it)"
)

RUN = "window.__pwned=1;console.log('PWNED')"
PAYLOADS = {
    "script": f"<script>{RUN}</script>",
    "attribute": f'"><img src=x onerror={RUN}>',
    "single-quote": f"'><svg onload={RUN}>",
    "js-url": f"javascript:{RUN}",
    "end-script": f"</script><script>{RUN}</script>",
    "end-textarea": f"</textarea><img src=x onerror={RUN}>",
    "unicode": f"\u202e\u200b＜script＞{RUN}＜/script＞<img src=x onerror={RUN}>",
    "template": "{{ 7*7 }}{% raw %}${7*7}",
}
"""Each payload goes into every text the store keeps."""

DECOY = new_id()
"""A plain tape whose JSON download holds a payload: a fragment URL that reaches it runs it."""
TAPE_IDS = [
    f'"><img src=x onerror={RUN}>',
    f"javascript:{RUN}",
    f"'><svg onload={RUN}>",
    f"?fragment=1#<script>{RUN}<\u2215script>",
    "..",
]
"""Tape ids the store accepts; a studio link must lead to the tape it names, or to a 404."""
CALL_IDS = [
    f"../tapes/{DECOY}/json#",
    f'"><img src=x onerror={RUN}>',
    f"javascript:{RUN}",
    "..",
]
"""LLM-call ids: the first one made the old studio fetch the decoy's JSON as the call's HTML."""


def _call(call_id: str, text: str) -> LLMCall:
    return LLMCall(
        id=call_id,
        model=text,
        prompt=Prompt(
            messages=[
                {"role": "system", "content": text},
                {"role": text, "content": [{"type": "image_url", "image_url": {"url": text}}]},
            ],
            tools=[{"type": "function", "function": {"name": text, "description": text}}],
        ),
        output=LLMOutput(
            content=text, tool_calls=[ToolCallRequest(id=text, name=text, arguments=text)]
        ),
    )


def _hostile_tape(store: TapeStore, tape_id: str, status: str = "stopped") -> Tape:
    texts = list(PAYLOADS.values())
    everything = "\n".join(texts)
    calls = [_call(call_id, everything) for call_id in CALL_IDS]
    steps: list[Any] = [UserMessage(content=everything)]
    for call, text in zip(calls, texts, strict=False):
        meta = StepMetadata(agent=text, node=text, llm_call_id=call.id)
        steps.append(AssistantMessage(content=text, metadata=meta))
    steps += [
        ToolCall(name=texts[0], arguments={"html": texts[1]}, call_id=texts[2]),
        ToolResult(name=texts[3], call_id=texts[2], content=everything, error=texts[4]),
        load_step({"kind": texts[1], "html": texts[0], "url": texts[3]}),
    ]
    tape = Tape(
        id=tape_id,
        author=texts[1],
        context={"html": everything, "</script>": texts[5]},
        metadata=TapeMetadata(
            task_id=texts[1], outcome=texts[2], result=texts[0], error=texts[6], tags=texts
        ),
        steps=steps,
    )
    store.save(tape, status=status, agent=texts[1], llm_calls=calls)
    for index, text in enumerate(texts):
        store.annotate(tape.id, index % 3 or None, rating=-1, label=text, comment=text, author=text)
    return tape


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    store = TapeStore(f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'tapes.db'}")
    decoy = Tape(id=DECOY, steps=[UserMessage(content=f"<img src=x onerror={RUN}>")])
    store.save(decoy, status="stopped", agent="decoy")
    tapes = [_hostile_tape(store, tape_id) for tape_id in TAPE_IDS]
    store.fork(tapes[0], 3, author=PAYLOADS["attribute"])  # a child: lineage and parent links
    live = _hostile_tape(store, PAYLOADS["single-quote"] + " live", status=PAYLOADS["script"])
    store.set_status(live.id, "running")
    with live_studio(store) as url:
        yield {"url": url, "store": store, "tapes": tapes, "live": live}
    store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        yield browser
        browser.close()


class Watch:
    """A page in a context without the CSP, and every sign that a payload ran."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(bypass_csp=True)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.dialogs: list[str] = []
        self.logs: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("console", lambda m: self.logs.append(m.text))

    def assert_inert(self, where: str) -> None:
        found = self.page.evaluate(INERT)
        assert found["pwned"] is None, f"a payload ran on {where}"
        assert self.dialogs == [], f"a dialog opened on {where}: {self.dialogs}"
        assert not [m for m in self.logs if "PWNED" in m], f"a payload logged on {where}"
        assert found["markup"] == 0, f"a payload became markup on {where}"
        scripts = found["scripts"]
        assert all(src and src.endswith("/static/studio.js") for src in scripts), (where, scripts)


INERT = """() => ({
  pwned: window.__pwned === undefined ? null : window.__pwned,
  markup: document.querySelectorAll(
    "a[href^='javascript:' i], [onerror], [onload], [onclick], [onmouseover], svg, iframe"
  ).length,
  scripts: Array.from(document.scripts).map(s => s.getAttribute("src")),
})"""
"""What a payload that ran or became markup leaves behind, read in one round trip."""


def _kind(path: str) -> str:
    parts = path.strip("/").split("/")
    if path == "/" or path == "":
        return "list"
    if parts[0] == "tapes" and len(parts) == 2:
        return "tape"
    if parts[0] == "tapes" and parts[-1] == "edit":
        return "edit"
    return parts[0]


def _crawl_key(link: str) -> str:
    """What makes a link worth a visit: list pages differ by their fields, edits by step."""
    parts = urlsplit(link)
    kind = _kind(parts.path)
    if kind == "list":
        return "list?" + ",".join(sorted(f.split("=")[0] for f in parts.query.split("&")))
    if kind == "edit":
        return "edit " + parts.path.split("/")[-2]
    return link


def _open_everything(watch: Watch) -> None:
    """Open every folded section; wait until each LLM call's fragment loaded or failed."""
    page = watch.page
    page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")
    page.wait_for_function(
        "Array.from(document.querySelectorAll('details[data-call-src]')).every("
        "d => d.dataset.ready || d.textContent.includes('Could not load'))"
    )


def test_hostile_studio_runs_no_script(studio: dict[str, Any], browser: Any) -> None:
    url, store = studio["url"], studio["store"]
    watch = Watch(browser)
    page = watch.page
    visited: Counter[str] = Counter()
    statuses: Counter[int] = Counter()

    def visit(address: str) -> None:
        response = page.goto(address)
        path = urlsplit(page.url).path
        statuses[response.status] += 1
        visited[_kind(path) if response.ok else "error"] += 1
        if response.ok and _kind(path) == "tape" and path.count("/") == 2:
            # a link to a tape shows that tape: ids with ?, # or / stay in their segment
            shown = page.get_attribute("code.tape-id", "title")
            assert shown == unquote(path.split("/")[2]), (path, shown)
        _open_everything(watch)
        watch.assert_inert(address)

    # the crawl: the same-site links from the list on (one list page per set of query
    # fields, one edit page per step index), except the JSON downloads
    filters = "&".join(f"{k}=%22%3E%3Cb%3E{k}" for k in ("q", "tag", "agent", "status", "since"))
    queue = [f"{url}/", f"{url}/?{filters}"]
    seen = {_crawl_key(link) for link in queue}
    while queue:
        address = queue.pop(0)
        visit(address)
        for link in page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)"):
            link = link.split("#", 1)[0]
            key = _crawl_key(link)
            if link.startswith(url) and not link.endswith("/json") and key not in seen:
                seen.add(key)
                queue.append(link)

    # the fragments and pages the links do not reach, with hostile ids in their addresses
    for call_id in CALL_IDS[1:3]:
        fragment = page.request.get(f"{url}/calls/{call_id}?fragment=1")
        assert fragment.status == 200 and fragment.headers["x-studio-fragment"] == "call"
        assert "<img" not in fragment.text() and "<script" not in fragment.text()
    for path in [
        *(f"/calls/{url_part(call_id)}" for call_id in CALL_IDS),
        f"/tapes/{PAYLOADS['attribute']}x",
        f"/calls/{PAYLOADS['script'].replace('/', '')}",
        "/tapes/%00",
        "/calls/" + "a" * 300,
        f"/diff?a={PAYLOADS['attribute']}&b=",
        f"/diff?a={TAPE_IDS[0]}&b=%3Cscript%3E",
    ]:
        visit(url + path.replace("#", "%23"))
    refused = page.request.post(
        f"{url}/annotations/{PAYLOADS['attribute']}/delete", form={"tape": TAPE_IDS[0]}
    )
    assert refused.status == 400 and "not an annotation id" in refused.text()

    # the forms of a tape whose id is hostile: each redirect comes back to the right tape
    target = studio["tapes"][3]  # its id starts with "?fragment=1#"
    visit(f"{url}/tapes/{url_part(target.id)}")
    page.fill("#notes input[name=label]", PAYLOADS["end-textarea"])
    page.fill("#notes textarea[name=comment]", PAYLOADS["script"])
    with page.expect_navigation():
        page.locator("#notes button[type=submit]").click()
    assert page.get_attribute("code.tape-id", "title") == target.id
    assert PAYLOADS["end-textarea"] in page.inner_text("#notes")
    watch.assert_inert("the annotated tape")
    with page.expect_navigation():
        page.locator("#notes .note button.danger").first.click()
    assert page.inner_text(".flash-ok") == "Annotation deleted."
    assert page.get_attribute("code.tape-id", "title") == target.id
    watch.assert_inert("the tape after deleting a note")
    page.locator("#step-2").get_by_role("link", name="Edit").click()
    page.fill("#step-json", PAYLOADS["end-textarea"] + PAYLOADS["end-script"])
    page.get_by_role("button", name="Save as a fork").click()
    page.wait_for_selector("#edit-error")
    assert page.input_value("#step-json") == PAYLOADS["end-textarea"] + PAYLOADS["end-script"]
    visited["edit (refused)"] += 1
    watch.assert_inert("the refused edit")
    page.goto(f"{url}/tapes/{url_part(target.id)}")
    page.locator("#step-2").get_by_role("button", name="Fork after").click()
    page.wait_for_selector(".flash-ok")
    child = store.get(page.get_attribute("code.tape-id", "title"))
    assert child.parent_id == target.id and len(child) == 3
    visited["fork"] += 1
    watch.assert_inert("the fork")

    # a live run: hostile steps arrive as server-sent events and are inserted as they come
    live = studio["live"]
    visit(f"{url}/tapes/{url_part(live.id)}")
    assert page.locator("#steps[data-live-src]").count() == 1
    extra = [UserMessage(content=text) for text in PAYLOADS.values()]
    store.append_steps(live.id, len(live), extra)
    store.set_status(live.id, PAYLOADS["attribute"])
    page.wait_for_selector(f"#step-{len(live) + len(extra) - 1}.fresh")
    page.wait_for_selector("#run-end:not([hidden])")
    visited["events"] += 1
    _open_everything(watch)
    watch.assert_inert("the live tape")

    # the notebook view of every hostile tape has no CSP at all
    for tape in studio["tapes"]:
        page.goto("about:blank")
        page.set_content(tape_html(tape, store.llm_calls_of(tape)))
        page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")
        visited["notebook"] += 1
        watch.assert_inert(f"the notebook view of {tape.id!r}")

    watch.context.close()
    kinds = {"list", "tape", "edit", "calls", "diff", "error", "events", "fork", "notebook"}
    assert kinds <= set(visited), visited
    print(f"\nstudio pages with hostile content, CSP off: {dict(visited)}; statuses {statuses}")
