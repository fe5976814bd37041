"""The HTML step view without a server: image sources, folding, calls, diffs, notebook HTML."""

from __future__ import annotations

import re
import subprocess
import sys

from tapeagents import FinalAnswer, Reasoning, Tape, UserMessage
from tapeagents.render.html import (
    FOLD_CHARS,
    TextView,
    diff_tapes,
    image_src,
    step_views,
    tape_html,
)
from tapeagents.store import TapeStore
from tests.studio.data import HOSTILE, SVG_IMAGE, browsing_tape, hostile_tape, screenshot_url


def test_only_base64_raster_images_are_image_sources() -> None:
    png = screenshot_url()
    assert image_src(png) == png
    assert image_src("data:image/jpeg;base64,/9j/4AAQ") == "data:image/jpeg;base64,/9j/4AAQ"
    for refused in [
        SVG_IMAGE,
        'data:image/png;base64,AAA" onerror="alert(1)',
        "data:image/png,not-base64",
        "data:text/html;base64,PHNjcmlwdD4=",
        "javascript:alert(1)",
        "https://example.org/a.png",
        42,
    ]:
        assert image_src(refused) is None, refused


def test_long_texts_fold_behind_a_preview() -> None:
    short = TextView.of("a few words")
    assert short.preview is None
    long = TextView.of("word " * FOLD_CHARS)
    assert long.preview is not None and len(long.preview) < len(long.text)
    many_lines = TextView.of("\n".join(str(i) for i in range(100)))
    assert many_lines.preview is not None and many_lines.preview.count("\n") < 20


def test_step_views_link_steps_to_their_llm_call(tmp_path) -> None:
    store = TapeStore(f"sqlite:///{tmp_path / 'tapes.db'}")
    tape = browsing_tape(store)
    calls = {call.id: call for call in store.llm_calls_of(tape)}
    views = step_views(tape, calls, store.annotations(tape.id))
    reasoning, action, page, answer = views[1], views[2], views[3], views[4]
    assert reasoning.call is not None and reasoning.call.output.usage.prompt_tokens == 212
    assert reasoning.call_first is None  # the first step of its call shows the call
    assert action.call_first == 1  # the next one points back to it
    assert page.answers == 2  # the observation answers the tool call
    assert page.fields[-1].name == "screenshot" and page.fields[-1].images == [screenshot_url()]
    assert [note.label for note in reasoning.notes] == ["good-plan"]
    assert answer.call is not None and answer.call.output.cost == 0.000287
    store.close()


def test_diff_finds_the_first_divergence() -> None:
    base = Tape(steps=[UserMessage(content="2 + 3?"), Reasoning(text="add them")])
    fork = base.fork(2)
    base.append(FinalAnswer(answer="5"))
    fork.append(FinalAnswer(answer="6"))
    fork.append(Reasoning(text="oops"))
    view = diff_tapes(base, fork)
    assert view.first == 2 and view.shared == 2
    assert [row.same for row in view.rows] == [True, True, False, False]
    assert ("-", "5") in view.rows[2].segments and ("+", "6") in view.rows[2].segments
    assert view.rows[3].left is None
    assert diff_tapes(base, base).first is None


def test_notebook_html_is_self_contained_and_escaped(tmp_path) -> None:
    store = TapeStore(f"sqlite:///{tmp_path / 'tapes.db'}")
    tape = hostile_tape(store)
    html = tape_html(tape, store.llm_calls_of(tape))
    assert "<script" not in html.lower()
    assert not re.search(r"<(img|svg|a)\b[^>]*\bon\w+=", html, re.IGNORECASE)
    assert not re.search(r"""<a\b[^>]*href=["']?javascript:""", html, re.IGNORECASE)
    for text in HOSTILE:
        if "<" in text:
            assert text not in html  # escaped
    assert "{{ 7*7 }}" in html  # shown as text, never evaluated as a template
    assert "&lt;script&gt;" in html
    assert "<style>" in html and "stylesheet" not in html  # inline CSS, no external asset
    assert "http://" not in html and "https://" not in html
    store.close()


def test_tape_html_shows_every_step_and_its_images(tmp_path) -> None:
    store = TapeStore(f"sqlite:///{tmp_path / 'tapes.db'}")
    tape = browsing_tape(store)
    html = tape_html(tape)
    assert 'class="ta ta-notebook"' in html
    assert html.count('class="step ') == len(tape)
    assert 'class="step fam-user"' in html and 'class="step fam-stop"' in html
    assert f'src="{screenshot_url()}"' in html  # the screenshot is shown as an image
    assert "Find the cheapest direct flight" in html
    store.close()


def test_the_notebook_view_needs_no_web_framework() -> None:
    code = (
        "import sys; from tapeagents import Tape, UserMessage; "
        "from tapeagents.render import tape_html; "
        "tape_html(Tape(steps=[UserMessage(content='hi')])); "
        "print([m for m in ('fastapi', 'starlette', 'uvicorn') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
