"""Tapes and steps: typed, append-only, exact JSON round trip, unknown kinds kept."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tapeagents import (
    AssistantMessage,
    FinalAnswer,
    Reasoning,
    Step,
    Tape,
    Thought,
    ToolCall,
    ToolResult,
    UnknownStep,
    UsageError,
    UserMessage,
)
from tapeagents.steps import load_step, step_kinds

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)

steps = st.one_of(
    st.builds(UserMessage, content=st.text()),
    st.builds(AssistantMessage, content=st.text()),
    st.builds(Reasoning, text=st.text()),
    st.builds(FinalAnswer, answer=st.text()),
    st.builds(
        ToolCall,
        name=st.text(min_size=1),
        arguments=st.dictionaries(st.text(), json_values, max_size=4),
    ),
    st.builds(
        ToolResult,
        name=st.text(),
        call_id=st.text(),
        content=st.text(),
        error=st.none() | st.text(),
    ),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(steps, max_size=8),
    json_values,
    st.lists(st.text(max_size=8), max_size=3),
)
def test_json_round_trip_is_exact(step_list: list[Step], context: Any, tags: list[str]) -> None:
    tape = Tape(steps=step_list, context=context, author="me")
    tape.metadata.tags = tags
    text = tape.model_dump_json()
    loaded = Tape.model_validate_json(text)
    assert loaded == tape
    assert [type(s) for s in loaded] == [type(s) for s in tape]
    assert loaded.model_dump_json() == text


def test_unknown_kind_loads_as_generic_step_and_writes_back_unchanged() -> None:
    foreign = {
        "kind": "from_the_future",
        "payload": {"a": [1, 2.5, None]},
        "metadata": {"id": "abc", "agent": "x", "new_field": 7},
    }
    text = json.dumps({"id": "t1", "steps": [{"kind": "user", "content": "hi"}, foreign]})
    tape = Tape.model_validate_json(text)
    step = tape.steps[1]
    assert isinstance(step, UnknownStep)
    assert step.kind == "from_the_future"
    assert step.payload == {"a": [1, 2.5, None]}  # type: ignore[attr-defined]
    assert step.metadata.id == "abc"
    assert json.loads(tape.model_dump_json())["steps"][1] == foreign


def test_step_without_kind_is_a_clear_error() -> None:
    with pytest.raises(UsageError, match="kind"):
        load_step({"content": "no kind"})


def test_tape_that_is_not_json_raises_a_validation_error() -> None:
    with pytest.raises(ValueError, match="Invalid JSON"):
        Tape.model_validate_json("{not json")


def test_new_step_kinds_register_and_duplicates_are_refused() -> None:
    class Plan(Thought):
        kind: Literal["test_plan"] = "test_plan"
        items: list[str]

    assert step_kinds()["test_plan"] is Plan
    tape = Tape.model_validate_json(Tape(steps=[Plan(items=["a", "b"])]).model_dump_json())
    assert isinstance(tape.steps[0], Plan)
    with pytest.raises(UsageError, match="already used"):

        class Other(Thought):
            kind: Literal["test_plan"] = "test_plan"


def test_steps_are_immutable_but_metadata_can_be_stamped() -> None:
    step = Reasoning(text="x")
    with pytest.raises(ValueError):
        step.text = "y"  # type: ignore[misc]
    step.metadata.node = "main"
    assert step.metadata.node == "main"


def test_append_is_in_place_and_does_not_copy_steps() -> None:
    tape = Tape()
    steps_list = tape.steps
    for i in range(1000):
        tape.append(Reasoning(text=str(i)))
    assert tape.steps is steps_list and len(tape) == 1000


def test_fork_shares_a_prefix_and_records_lineage() -> None:
    tape = Tape(steps=[UserMessage(content="a"), AssistantMessage(content="b")])
    tape.metadata.tags = ["x"]
    child = tape.fork(at=1)
    assert child.parent_id == tape.id and child.fork_index == 1 and child.id != tape.id
    assert child.steps == tape.steps[:1] and child.steps is not tape.steps
    child.append(AssistantMessage(content="c"))
    assert len(tape) == 2
    with pytest.raises(UsageError, match="Cannot fork at step 5"):
        tape.fork(at=5)


def test_pending_actions_track_answers_and_user_input() -> None:
    call = ToolCall(name="f")
    other = ToolCall(name="g")
    tape = Tape(steps=[UserMessage(content="q"), Reasoning(text="r"), call, other])
    assert tape.pending_actions() == [call, other]
    tape.append(ToolResult(name="f", call_id=call.call_id, content="1", action_id=call.metadata.id))
    assert tape.pending_actions() == [other]
    tape.append(
        ToolResult(name="g", call_id=other.call_id, content="2", action_id=other.metadata.id)
    )
    assert tape.pending_actions() == []
    question = AssistantMessage(content="which one?")
    tape.append(question)
    assert tape.pending_actions() == [question]
    tape.append(UserMessage(content="the first"))
    assert tape.pending_actions() == []
