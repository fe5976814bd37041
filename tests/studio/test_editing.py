"""The step edit form's parsing, without a server: what it accepts and what it says otherwise."""

from __future__ import annotations

import pytest

from tapeagents import Reasoning, StepMetadata, UsageError
from tapeagents.steps import load_step
from tapeagents.studio.editing import parse_edit


def test_an_edit_keeps_the_origin_and_names_the_step_it_replaces() -> None:
    original = Reasoning(text="plan", metadata=StepMetadata(agent="a", node="n", llm_call_id="c"))
    edited = parse_edit(original, '{"kind": "reasoning", "text": "better plan"}')
    assert isinstance(edited, Reasoning) and edited.text == "better plan"
    assert (edited.metadata.agent, edited.metadata.node) == ("a", "n")
    assert edited.metadata.llm_call_id is None
    assert edited.metadata.extra["edited_from"] == original.metadata.id


def test_a_step_of_an_unknown_kind_can_be_edited_and_keeps_its_new_metadata() -> None:
    original = load_step({"kind": "from_the_future", "x": 1, "metadata": {"agent": "a"}})
    edited = parse_edit(original, '{"kind": "from_the_future", "x": 2}')
    written = edited.model_dump(mode="json")
    assert written["x"] == 2 and written["metadata"]["agent"] == "a"
    assert written["metadata"]["extra"]["edited_from"] == original.metadata.id


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ('{"kind": "final_answer", "answer": "x"}', "The kind must stay 'reasoning'"),
        ('{"text": "x", "metadata": {}}', "Leave out 'metadata'"),
        ('{"text": 3}', "text: Input should be a valid string"),
    ],
)
def test_a_bad_edit_says_what_to_change(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_edit(Reasoning(text="plan"), text)
