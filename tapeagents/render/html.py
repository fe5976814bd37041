"""Tapes as HTML: the step view of the studio's pages and of notebooks (`tape_html`).

This module needs only jinja2 (no web framework), so a notebook can render a tape without the
`studio` extra; the studio builds its pages on `environment()` and serves `STATIC`. Every
template is rendered with autoescaping on: tapes carry web pages and model output, and nothing
in them may become markup. Autoescaping covers HTML text and quoted attributes only, so every
stored value that goes into a URL (a tape, LLM-call or annotation id in a link, a form action
or a fragment's address) passes through the `urlpart` filter first, which percent-encodes it
as one path segment or query value. The only value from a tape that reaches an attribute
unescaped-in-meaning is an image `src`, and only after `image_src` has checked that it is a
base64 PNG, JPEG, GIF or WebP data URL.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from tapeagents.llms.base import LLMCall
from tapeagents.render import formats
from tapeagents.render.classify import (
    LINK_FIELDS,
    Family,
    step_family,
    step_fields,
    step_origin,
    step_summary,
)
from tapeagents.steps import Step, ToolCall, ToolResult, UnknownStep
from tapeagents.tape import Tape

__all__ = [
    "FOLD_CHARS",
    "STATIC",
    "TEMPLATES",
    "CallView",
    "DiffRow",
    "DiffView",
    "FieldView",
    "StepView",
    "TextView",
    "call_view",
    "diff_tapes",
    "environment",
    "image_src",
    "step_views",
    "tape_html",
    "tape_totals",
    "url_part",
]

TEMPLATES = Path(__file__).parent / "templates"
"""The step view's templates: `_macros.html` (a step card, an LLM call) and `notebook.html`."""
STATIC = Path(__file__).parent / "static"
"""The step view's stylesheet, `steps.css` (the studio serves it, notebooks inline it)."""
FOLD_CHARS = 1500
"""Texts longer than this (or than `FOLD_LINES` lines) are folded behind a preview."""
FOLD_LINES = 30
PREVIEW_CHARS = 600
PREVIEW_LINES = 10
INLINE_DIFF_CHARS = 20_000
"""Texts longer than this are compared whole, without a word-by-word diff."""

_IMAGE_SRC = re.compile(r"data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/]+={0,2}")


def image_src(value: Any) -> str | None:
    """The value if it is a safe image data URL (base64 PNG, JPEG, GIF or WebP), else None.

    SVG and every other scheme are refused: only these can be used as an `<img src>`.
    """
    if isinstance(value, str) and value.startswith("data:image/"):
        if _IMAGE_SRC.fullmatch(value.strip()):
            return value.strip()
    return None


def url_part(value: Any) -> str:
    """`value` percent-encoded as one URL path segment or query value (`/`, `?`, `#`, `&` too).

    A stored id can hold anything, and autoescaping does not stop `../x`, `?q` or `#f` from
    changing where a link points. The dot segments `.` and `..` are encoded once more (`%252E`):
    browsers read `%2E` as a dot and would resolve them to another page.
    """
    text = quote(str(value), safe="")
    if text in (".", ".."):
        return "%252E" * len(text)
    return text


def _is_image_like(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("data:image/")


def _image_label(value: str) -> str:
    kind = value[len("data:image/") :].split(";", 1)[0].split(",", 1)[0][:20]
    size = len(value) * 3 // 4
    return f"[image/{kind}, {size // 1024} KB]" if size >= 1024 else f"[image/{kind}, {size} bytes]"


# ----------------------------------------------------------------------------- view models


@dataclass
class TextView:
    """A text, with a preview when it is long enough to fold."""

    text: str
    preview: str | None = None
    """The first lines when the text is folded; None when it is shown whole."""
    lines: int = 0

    @classmethod
    def of(cls, text: str) -> TextView:
        lines = text.count("\n") + 1
        if len(text) <= FOLD_CHARS and lines <= FOLD_LINES:
            return cls(text, None, lines)
        head = "\n".join(text.split("\n", PREVIEW_LINES)[:PREVIEW_LINES])[:PREVIEW_CHARS]
        return cls(text, head, lines)


@dataclass
class FieldView:
    """One field of a step: a text, a JSON value, or images."""

    name: str
    text: TextView | None = None
    json: TextView | None = None
    images: list[str] = field(default_factory=list)
    refused_images: list[str] = field(default_factory=list)
    """Labels of image data that is not shown (not one of the allowed formats)."""


@dataclass
class CallView:
    """An LLM call, ready to show: its messages, tools and output."""

    call: LLMCall
    messages: list[dict[str, Any]]
    """Each: role, texts (TextViews), images, tool_calls (name, arguments), tool_call_id."""
    tools: list[dict[str, Any]]
    """Each: name, description, schema (pretty JSON)."""
    output_text: TextView | None
    output_calls: list[dict[str, str]]
    parameters: str | None
    response_format: str | None


@dataclass
class StepView:
    """A step with what the step view shows about it."""

    index: int
    step: Step
    family: Family
    origin: str
    clock: str
    when: str
    delta: str
    fields: list[FieldView]
    call_id: str | None
    call: LLMCall | None
    call_first: int | None
    """Index of the first step parsed from the same call, when that is an earlier step."""
    tool_name: str | None = None
    answers: int | None = None
    """Index of the action this observation answers, when it is on the tape."""
    tool_call_id: str | None = None
    notes: list[Any] = field(default_factory=list)


def _text_of_part(part: Any) -> tuple[str | None, str | None]:
    """(text, image url) of one part of a multimodal message."""
    if isinstance(part, dict):
        if part.get("type") == "text":
            return str(part.get("text", "")), None
        if part.get("type") == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            return None, url if isinstance(url, str) else ""
    return json.dumps(part, ensure_ascii=False, indent=2, default=str), None


def _pretty(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


def _arguments(text: str) -> str:
    """Tool-call arguments as the model wrote them, pretty-printed when they are valid JSON."""
    try:
        return _pretty(json.loads(text))
    except ValueError:
        return text


def call_view(call: LLMCall) -> CallView:
    """What the studio shows of one LLM call: the exact prompt, tools and raw output."""
    messages = []
    for message in call.prompt.messages:
        content = message.get("content")
        texts: list[TextView] = []
        images: list[str] = []
        refused: list[str] = []
        parts = content if isinstance(content, list) else [content]
        for part in parts:
            if part is None:
                continue
            text, url = (part, None) if isinstance(part, str) else _text_of_part(part)
            if url is not None:
                src = image_src(url)
                if src:
                    images.append(src)
                else:
                    refused.append(_image_label(url) if _is_image_like(url) else "[image URL]")
            elif text is not None:
                texts.append(TextView.of(text))
        tool_calls = [
            {
                "name": str((c.get("function") or {}).get("name", "")),
                "arguments": _arguments(str((c.get("function") or {}).get("arguments", ""))),
                "id": str(c.get("id", "")),
            }
            for c in message.get("tool_calls") or []
            if isinstance(c, dict)
        ]
        messages.append(
            {
                "role": str(message.get("role", "?")),
                "texts": texts,
                "images": images,
                "refused": refused,
                "tool_calls": tool_calls,
                "tool_call_id": message.get("tool_call_id"),
            }
        )
    tools = []
    for tool in call.prompt.tools or []:
        function = tool.get("function", tool) if isinstance(tool, dict) else {}
        tools.append(
            {
                "name": str(function.get("name", "?")),
                "description": str(function.get("description", "")),
                "schema": _pretty(function.get("parameters", {})),
            }
        )
    output = call.output
    return CallView(
        call=call,
        messages=messages,
        tools=tools,
        output_text=TextView.of(output.content) if output.content else None,
        output_calls=[
            {"name": c.name, "arguments": c.arguments, "id": c.id} for c in output.tool_calls
        ],
        parameters=_pretty(call.parameters) if call.parameters else None,
        response_format=_pretty(call.prompt.response_format)
        if call.prompt.response_format
        else None,
    )


def _strip_images(value: Any, images: list[str], refused: list[str]) -> Any:
    """The value with image data URLs taken out (collected) and replaced by a short label."""
    if isinstance(value, str):
        if _is_image_like(value):
            src = image_src(value)
            if src:
                images.append(src)
                return f"[image {len(images)}]"
            label = _image_label(value)
            refused.append(label)
            return label
        return value
    if isinstance(value, dict):
        return {k: _strip_images(v, images, refused) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_images(v, images, refused) for v in value]
    return value


def _fields(step: Step) -> list[FieldView]:
    data = step_fields(step)
    if isinstance(step, ToolCall | ToolResult):
        data.pop("name", None)
    views = []
    for name, value in data.items():
        if name in LINK_FIELDS and not isinstance(step, UnknownStep):
            continue
        if value is None or value == "" or value == [] or value == {}:
            continue
        images: list[str] = []
        refused: list[str] = []
        view = FieldView(name=name)
        if isinstance(value, str):
            if _is_image_like(value):
                _strip_images(value, images, refused)
            else:
                view.text = TextView.of(value)
        else:
            view.json = TextView.of(_pretty(_strip_images(value, images, refused)))
        view.images, view.refused_images = images, refused
        views.append(view)
    return views


def step_views(
    tape: Tape[Any, Any],
    calls: Mapping[str, LLMCall] | None = None,
    notes: Iterable[Any] = (),
    *,
    start: int = 0,
    previous: Step | None = None,
) -> list[StepView]:
    """View models of the tape's steps from `start` (with their calls and annotations)."""
    calls = calls or {}
    by_step: dict[int, list[Any]] = {}
    for note in notes:
        if note.step_index is not None:
            by_step.setdefault(note.step_index, []).append(note)
    first_of_call: dict[str, int] = {}
    position: dict[str, int] = {}
    for index, step in enumerate(tape.steps):
        position.setdefault(step.metadata.id, index)
        if index < start and step.metadata.llm_call_id:
            first_of_call.setdefault(step.metadata.llm_call_id, index)
    views = []
    if previous is None and start > 0:
        previous = tape.steps[start - 1]
    for index in range(start, len(tape.steps)):
        step = tape.steps[index]
        meta = step.metadata
        call_id = meta.llm_call_id
        first = None
        if call_id:
            first = first_of_call.setdefault(call_id, index)
            first = first if first != index else None
        answered = getattr(step, "action_id", None)
        delta = formats.elapsed(meta.created_at - previous.metadata.created_at) if previous else ""
        views.append(
            StepView(
                index=index,
                step=step,
                family=step_family(step),
                origin=step_origin(step),
                clock=formats.clock(meta.created_at),
                when=formats.timestamp(meta.created_at),
                delta=delta,
                fields=_fields(step),
                call_id=call_id,
                call=calls.get(call_id) if call_id else None,
                call_first=first,
                tool_name=step.name if isinstance(step, ToolCall | ToolResult) else None,
                answers=position.get(answered) if isinstance(answered, str) else None,
                tool_call_id=step.call_id if isinstance(step, ToolCall | ToolResult) else None,
                notes=by_step.get(index, []),
            )
        )
        previous = step
    return views


def tape_totals(calls: Sequence[LLMCall]) -> dict[str, Any]:
    """Calls, tokens and cost of a tape's LLM calls (each call counted once)."""
    unique = {call.id: call for call in calls}.values()
    costs = [c.output.cost for c in unique if c.output.cost is not None]
    return {
        "calls": len(unique),
        "prompt_tokens": sum(c.output.usage.prompt_tokens for c in unique),
        "completion_tokens": sum(c.output.usage.completion_tokens for c in unique),
        "cost": sum(costs) if costs else None,
    }


# ----------------------------------------------------------------------------- diff


@dataclass
class DiffRow:
    """One index of a two-tape comparison."""

    index: int
    left: StepView | None
    right: StepView | None
    same: bool
    segments: list[tuple[str, str]] | None = None
    """Word diff of the two steps' texts as (op, text), op in "=", "-", "+"; None if not shown."""


@dataclass
class DiffView:
    """Two tapes compared step by step."""

    left: Tape[Any, Any]
    right: Tape[Any, Any]
    rows: list[DiffRow]
    first: int | None
    """Index of the first step that differs; None when the tapes are equal."""
    shared: int
    """How many leading steps are the same."""


def _content(step: Step) -> tuple[str, str]:
    """What a comparison looks at: the kind and what the model sees, not ids or times."""
    return step.kind, json.dumps(step.llm_dict(), sort_keys=True, default=str)


def _word_diff(a: str, b: str) -> list[tuple[str, str]] | None:
    if len(a) > INLINE_DIFF_CHARS or len(b) > INLINE_DIFF_CHARS:
        return None
    left, right = re.split(r"(\s+)", a), re.split(r"(\s+)", b)
    matcher = difflib.SequenceMatcher(a=left, b=right, autojunk=False)
    segments: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            segments.append(("=", "".join(left[i1:i2])))
            continue
        if i2 > i1:
            segments.append(("-", "".join(left[i1:i2])))
        if j2 > j1:
            segments.append(("+", "".join(right[j1:j2])))
    return segments


def diff_tapes(
    left: Tape[Any, Any],
    right: Tape[Any, Any],
    calls: Mapping[str, LLMCall] | None = None,
) -> DiffView:
    """Compare two tapes index by index; the first differing index is the divergence."""
    left_views = step_views(left, calls)
    right_views = step_views(right, calls)
    rows = []
    first = None
    for index in range(max(len(left_views), len(right_views))):
        a = left_views[index] if index < len(left_views) else None
        b = right_views[index] if index < len(right_views) else None
        same = a is not None and b is not None and _content(a.step) == _content(b.step)
        segments = None
        if not same and a is not None and b is not None and a.step.kind == b.step.kind:
            segments = _word_diff(step_summary(a.step, indent=2), step_summary(b.step, indent=2))
        if not same and first is None:
            first = index
        rows.append(DiffRow(index, a, b, same, segments))
    shared = first if first is not None else len(rows)
    return DiffView(left, right, rows, first, shared)


# ----------------------------------------------------------------------------- templates


@cache
def environment(*directories: Path) -> Environment:
    """A jinja2 environment over `directories`, then the step view's templates (`TEMPLATES`).

    Autoescaping is always on; the filters write values as `render.formats` does. The studio
    passes its own templates' directory, so its pages can import `_macros.html`.
    """
    env = Environment(
        loader=FileSystemLoader([*directories, TEMPLATES]),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        money=formats.money,
        local_time=formats.local_time,
        ago=formats.ago,
        short=formats.short_id,
        number=formats.number,
        urlpart=url_part,
    )
    env.globals.update(image_src=image_src)
    return env


@cache
def _steps_css() -> str:
    return (STATIC / "steps.css").read_text(encoding="utf-8")


def tape_html(tape: Tape[Any, Any], calls: Iterable[LLMCall] = ()) -> str:
    """The tape as self-contained HTML (inline CSS, no script), for notebooks.

    With `calls`, each LLM-produced step expands to the prompt and output of its call.
    """
    by_id = {call.id: call for call in calls}
    views = step_views(tape, by_id)
    return (
        environment()
        .get_template("notebook.html")
        .render(
            tape=tape,
            views=views,
            css=Markup(_steps_css()),  # our own stylesheet; escaping would break its selectors
            call_views={key: call_view(call) for key, call in by_id.items()},
            totals=tape_totals(list(by_id.values())),
        )
    )
