"""One classifier decides how every renderer sees a step: family, origin, one-line summary."""

from __future__ import annotations

from typing import Literal

from tapeagents import (
    Action,
    AssistantMessage,
    ErrorObservation,
    FinalAnswer,
    LLMFailure,
    Reasoning,
    Step,
    StepMetadata,
    ToolCall,
    ToolResult,
    UserMessage,
)
from tapeagents.render.classify import Family, step_family, step_origin, step_summary
from tapeagents.render.text import family_style
from tapeagents.steps import load_step


class Lookup(Action):
    kind: Literal["test_render_lookup"] = "test_render_lookup"
    query: str


class Bare(Step):
    """A step outside the five families."""

    kind: Literal["test_render_bare"] = "test_render_bare"


def test_every_built_in_kind_has_its_family() -> None:
    cases: list[tuple[Step, Family]] = [
        (UserMessage(content="hi"), Family.USER),
        (Reasoning(text="think"), Family.THOUGHT),
        (AssistantMessage(content="hello"), Family.ACTION),
        (ToolCall(name="add", arguments={"a": 1}), Family.ACTION),
        (Lookup(query="x"), Family.ACTION),
        (ToolResult(name="add", call_id="c", content="3"), Family.OBSERVATION),
        (ErrorObservation(error="no such tool"), Family.OBSERVATION),
        (FinalAnswer(answer="3"), Family.STOP),
        (LLMFailure(error="timeout"), Family.ERROR),
        (load_step({"kind": "from_the_future", "x": 1}), Family.UNKNOWN),
        (Bare(), Family.UNKNOWN),
    ]
    for step, family in cases:
        assert step_family(step) is family, step.kind


def test_every_family_has_a_terminal_style() -> None:
    styles = {family: family_style(family) for family in Family}
    assert styles[Family.ERROR] == "bold red"
    assert all(styles.values())


def test_origin_names_the_agent_and_node_or_the_world() -> None:
    by_agent = Reasoning(text="t", metadata=StepMetadata(agent="root/calc", node="plan"))
    assert step_origin(by_agent) == "root/calc/plan"
    assert step_origin(UserMessage(content="hi")) == ""
    assert step_origin(ToolResult(name="add", call_id="c", content="3")) == "environment"


def test_summary_shows_what_the_step_says() -> None:
    assert step_summary(ToolCall(name="add", arguments={"a": 1})) == 'add({"a": 1})'
    assert step_summary(ToolResult(name="add", call_id="c", content="3")) == "3"
    assert step_summary(Reasoning(text="think")) == "think"
    assert step_summary(Lookup(query="x")) == "x"
    unknown = load_step({"kind": "from_the_future", "a": 1, "b": "two", "metadata": {"id": "s"}})
    assert step_summary(unknown) == '{"a": 1, "b": "two"}'
    assert step_summary(unknown, indent=2).startswith('{\n  "a": 1')
