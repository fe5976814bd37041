"""Tapes for the studio tests: a calculator run, a browsing session with a screenshot, and a tape
full of hostile HTML."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Literal

from tapeagents import (
    AssistantMessage,
    FinalAnswer,
    Observation,
    Reasoning,
    Tape,
    TapeMetadata,
    ToolCall,
    ToolResult,
    UserMessage,
    run_sync,
)
from tapeagents.llms import LLMCall, LLMOutput, Prompt, ToolCallRequest, Usage
from tapeagents.steps import StepMetadata, UnknownStep, load_step
from tapeagents.store import TapeStore
from tests.studio.agents import calculator


class PageObservation(Observation):
    """What the browser shows: the page's text and a screenshot."""

    kind: Literal["studio_test_page"] = "studio_test_page"
    url: str
    text: str
    screenshot: str


def png(width: int, height: int, pixel) -> bytes:  # type: ignore[no-untyped-def]
    """A PNG image whose pixel (x, y) is `pixel(x, y)` -> (r, g, b)."""
    rows = b"".join(
        b"\x00" + b"".join(bytes(pixel(x, y)) for x in range(width)) for y in range(height)
    )

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + (chunk(b"IEND", b""))
    )


def screenshot_url() -> str:
    """A small fake web page (address bar, heading, text lines, a button) as a PNG data URL."""

    def pixel(x: int, y: int) -> tuple[int, int, int]:
        if y < 22:
            return (222, 226, 231) if not (60 < x < 300 and 6 < y < 16) else (255, 255, 255)
        if 40 < y < 52 and 20 < x < 200:
            return (36, 41, 47)
        for top in (66, 80, 94, 108):
            if top < y < top + 6 and 20 < x < 340 - (top % 3) * 40:
                return (175, 184, 193)
        if 128 < y < 150 and 20 < x < 110:
            return (9, 105, 218)
        return (255, 255, 255)

    return "data:image/png;base64," + base64.b64encode(png(360, 170, pixel)).decode()


def calc_tape(store: TapeStore, question: str = "What is 2 + 3?") -> Tape:
    agent, env = calculator()
    return run_sync(agent, question, env, store=store).tape


LONG = "\n".join(
    f"{i}. The page lists flight {i} from Oslo to Bergen, departing at {6 + i % 12}:15, "
    f"{'direct' if i % 3 else 'one stop'}, NOK {900 + 37 * i}."
    for i in range(1, 60)
)


def browsing_tape(store: TapeStore) -> Tape:
    """A hand-made browsing session: a prompt, reasoning, a click, a screenshot, an answer."""
    system = (
        "You are a travel assistant with a web browser. Think step by step, use the browser "
        "tools, and answer with the cheapest direct flight."
    )
    question = "Find the cheapest direct flight from Oslo to Bergen tomorrow morning."
    tools = [
        {
            "type": "function",
            "function": {
                "name": "open_url",
                "description": "Open a web page in the browser.",
                "parameters": {
                    "type": "object",
                    "properties": {"url": {"type": "string"}},
                    "required": ["url"],
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "final_answer",
                "description": "Give the answer and end the task.",
                "parameters": {
                    "type": "object",
                    "properties": {"answer": {"type": "string"}},
                    "required": ["answer"],
                },
            },
        },
    ]
    first = LLMCall(
        id="studio-test-call-1",
        model="gpt-4o-mini",
        prompt=Prompt(
            messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ],
            tools=tools,
        ),
        output=LLMOutput(
            content="I should search the airline's timetable for tomorrow's flights.",
            tool_calls=[
                ToolCallRequest(
                    id="call_open",
                    name="open_url",
                    arguments='{"url": "https://flights.example/osl-bgo"}',
                )
            ],
            usage=Usage(prompt_tokens=212, completion_tokens=38),
            cost=0.000055,
        ),
        latency=0.84,
    )
    shot = screenshot_url()
    second = LLMCall(
        id="studio-test-call-2",
        model="gpt-4o-mini",
        prompt=Prompt(
            messages=[
                *first.prompt.messages,
                first.output.as_message(),
                {"role": "tool", "tool_call_id": "call_open", "content": LONG},
            ],
            tools=tools,
        ),
        output=LLMOutput(
            tool_calls=[
                ToolCallRequest(
                    id="call_answer",
                    name="final_answer",
                    arguments='{"answer": "Flight 2 at 08:15, NOK 974."}',
                )
            ],
            usage=Usage(prompt_tokens=1830, completion_tokens=21),
            cost=0.000287,
        ),
        latency=1.27,
    )

    def meta(call: str | None = None, node: str = "browse") -> StepMetadata:
        return StepMetadata(agent="travel", node=node if call else "", llm_call_id=call)

    action = ToolCall(
        name="open_url",
        arguments={"url": "https://flights.example/osl-bgo"},
        call_id="call_open",
        metadata=meta(first.id),
    )
    tape = Tape(
        context={"date": "tomorrow", "from": "OSL", "to": "BGO"},
        metadata=TapeMetadata(task_id="flights-042", tags=["demo", "browser"]),
        steps=[
            UserMessage(content=question),
            Reasoning(text=first.output.content or "", metadata=meta(first.id)),
            action,
            PageObservation(
                url="https://flights.example/osl-bgo",
                text=LONG,
                screenshot=shot,
                action_id=action.metadata.id,
            ),
            FinalAnswer(answer="Flight 2 at 08:15, NOK 974.", metadata=meta(second.id)),
        ],
    )
    store.save(tape, status="stopped", agent="travel", llm_calls=[first, second])
    store.annotate(tape.id, 1, rating=1, label="good-plan", comment="Checks the timetable first.")
    return tape


XSS = "<script>window.__pwned = 'script'</script>"
IMG = "<img src=x onerror=\"window.__pwned='img'\">"
LINK = '<a href="javascript:window.__pwned=\'link\'" id="evil-link">click me</a>'
SVG = "\"'><svg onload=\"window.__pwned='svg'\"></svg>"
SVG_IMAGE = (
    "data:image/svg+xml;base64,"
    + base64.b64encode(
        b"<svg xmlns='http://www.w3.org/2000/svg' onload=\"alert('svg')\"></svg>"
    ).decode()
)
HTML_DATA = "data:text/html;base64," + base64.b64encode(b"<script>alert(1)</script>").decode()
STYLE = "</style><style>body{display:none}</style>"
HOSTILE = [XSS, IMG, LINK, SVG, STYLE, "{{ 7*7 }}", "javascript:alert(document.domain)"]


def hostile_tape(store: TapeStore) -> Tape:
    """A tape whose every text (steps, tool names, kinds, tags, prompts, notes) is hostile."""
    everything = "\n".join(HOSTILE)
    call = LLMCall(
        id="studio-test-hostile-call",
        model=IMG,
        prompt=Prompt(
            messages=[
                {"role": "system", "content": everything},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": XSS},
                        {"type": "image_url", "image_url": {"url": "javascript:alert(1)"}},
                        {"type": "image_url", "image_url": {"url": SVG_IMAGE}},
                    ],
                },
                {"role": IMG, "content": LINK},
            ],
            tools=[{"type": "function", "function": {"name": XSS, "description": IMG}}],
        ),
        output=LLMOutput(
            content=everything,
            tool_calls=[ToolCallRequest(id=SVG, name=IMG, arguments=LINK)],
        ),
    )
    steps = [
        UserMessage(content=everything),
        AssistantMessage(
            content=LINK, metadata=StepMetadata(agent=IMG, node=XSS, llm_call_id=call.id)
        ),
        ToolCall(name=XSS, arguments={"html": IMG, "url": SVG_IMAGE}, call_id=SVG),
        ToolResult(name=IMG, call_id=SVG, content=everything, error=SVG),
        load_step({"kind": IMG, "html": XSS, "shot": HTML_DATA, "svg": SVG_IMAGE}),
        PageObservation(url="javascript:alert(1)", text=STYLE, screenshot=SVG_IMAGE),
    ]
    assert isinstance(steps[4], UnknownStep)
    tape = Tape(
        author=XSS,
        context={"html": everything},
        metadata=TapeMetadata(task_id=IMG, outcome=SVG, result=XSS, error=IMG, tags=[XSS, LINK]),
        steps=steps,
    )
    store.save(tape, status=XSS, agent=IMG, llm_calls=[call])
    store.annotate(tape.id, 0, rating=-1, label=XSS, comment=IMG, author=LINK)
    store.annotate(tape.id, None, label=SVG, comment=STYLE)
    return tape
