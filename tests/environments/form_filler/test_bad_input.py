"""Bad input from the user or the model ends as a step the assistant can react to, and is scored."""

from __future__ import annotations

import pytest
from tapeagents.environments.form_filler import (
    FieldInvalid,
    FormError,
    companies,
    expert_agent,
    get_form,
    make_goal,
    run_dialogue,
    student_agent,
)

from tapeagents import LLMFailure, ParsingFailure, UserMessage
from tapeagents.errors import LLMError
from tapeagents.llms import LLM, LLMOutput, Prompt, ScriptedLLM


def answers(*outputs: str) -> ScriptedLLM:
    return ScriptedLLM(list(outputs))


async def test_nonsense_from_the_user_is_rejected_and_asked_again() -> None:
    goal = make_goal(get_form("buy_licenses"), "nonsense")
    dialogue = await run_dialogue(expert_agent(), goal)
    invalid = [s for s in dialogue.tape if isinstance(s, FieldInvalid)]
    assert len(invalid) == 1 and invalid[0].value == goal.first_value
    assert dialogue.score.correct and dialogue.score.validation_errors == 1


@pytest.mark.parametrize("company", list(companies()))
async def test_a_form_that_does_not_exist(company) -> None:
    goal = make_goal(None, "unknown_form", company=company)
    dialogue = await run_dialogue(expert_agent(), goal)
    assert dialogue.tape.kinds() == ["user", "find_form", "form_candidates", "final_answer"]
    assert dialogue.score.correct and not dialogue.score.completed


async def test_the_model_opens_a_form_that_does_not_exist_and_sets_a_wrong_date() -> None:
    goal = make_goal(get_form("late_checkout"), "happy")
    llm = answers(
        '[{"kind": "open_form", "name": "late_checkout_form"}]',
        '[{"kind": "open_form", "name": "late_checkout"}]',
        '[{"kind": "set_field", "field": "room_number", "value": "two hundred"}]',
        '[{"kind": "ask_user", "field": "room_number", "question": "Which room number?"}]',
    )
    dialogue = await run_dialogue(student_agent(llm), goal, max_turns=1)
    kinds = dialogue.tape.kinds()
    assert kinds[1:7] == [
        "open_form",
        "form_error",
        "open_form",
        "form_opened",
        "set_field",
        "field_invalid",
    ]
    assert "Error: There is no form called" in llm.prompts[1].messages[1]["content"]
    assert "must be a whole number" in llm.prompts[3].messages[1]["content"]
    assert dialogue.score.agent_errors == 1 and dialogue.score.validation_errors == 1


async def test_a_value_of_the_wrong_type_and_an_unknown_action_are_parsing_failures() -> None:
    goal = make_goal(get_form("late_checkout"), "happy")
    llm = answers(
        '[{"kind": "set_field", "field": "room_number", "value": [2, 1, 4]}]',
        '[{"kind": "launch_rocket", "target": "moon"}]',
        "Sure, I can help with that!",
    )
    dialogue = await run_dialogue(student_agent(llm), goal)
    failures = [s for s in dialogue.tape if isinstance(s, ParsingFailure)]
    assert len(failures) == 3 and dialogue.reason == "error"
    assert "Unknown tool or step 'launch_rocket'" in failures[1].error
    assert "set_field" in failures[1].error  # the error lists what the model may write
    assert failures[2].raw_output == "Sure, I can help with that!"
    assert "could not be used" in llm.prompts[1].messages[1]["content"]
    score = dialogue.score
    assert score.agent_errors == 3 and score.outcome == "not_submitted" and score.reward == 0
    assert dialogue.tape.metadata.outcome == "not_submitted"


async def test_a_submission_with_missing_fields_is_refused_and_counted() -> None:
    goal = make_goal(get_form("late_checkout"), "happy")
    llm = answers(
        '[{"kind": "open_form", "name": "late_checkout"}]',
        '[{"kind": "submit_form"}]',
        '[{"kind": "final_answer", "answer": "Done."}]',
    )
    dialogue = await run_dialogue(student_agent(llm), goal)
    refused = dialogue.tape[-2]
    assert refused.kind == "submission_refused" and "reservation code" in refused.errors[0]
    assert "Refused: The reservation code is required." in llm.prompts[2].messages[1]["content"]
    assert dialogue.score.validation_errors == 1 and dialogue.score.outcome == "not_submitted"


class Down(LLM):
    """A backend that is down."""

    def __init__(self) -> None:
        super().__init__("down")

    async def generate(self, prompt: Prompt) -> LLMOutput:
        raise LLMError("503 Service Unavailable")


async def test_a_failing_model_ends_the_dialogue_with_an_error_step() -> None:
    goal = make_goal(get_form("late_checkout"), "happy")
    dialogue = await run_dialogue(student_agent(Down()), goal)
    assert isinstance(dialogue.tape.last, LLMFailure) and dialogue.reason == "error"
    assert dialogue.score.agent_errors == 1 and dialogue.tape.metadata.outcome == "not_submitted"


async def test_gibberish_at_confirmation_is_confirmed_again() -> None:
    from tapeagents.environments.form_filler import (
        ConfirmForm,
        FieldSet,
        FormOpened,
        expert_action,
    )

    from tapeagents import Tape

    form = get_form("late_checkout")
    goal = make_goal(form, "happy")
    tape = Tape(
        steps=[
            FormOpened(name=form.name, description=form.description, parameters=form.parameters),
            *[FieldSet(field=name, value=value) for name, value in goal.values.items()],
            ConfirmForm(),
            UserMessage(content="blorp zzz"),
        ]
    )
    assert isinstance(expert_action(tape), ConfirmForm)


async def test_errors_from_the_environment_reach_the_student_prompt() -> None:
    llm = answers(
        '[{"kind": "set_field", "field": "x", "value": "1"}]',
        '[{"kind": "final_answer", "answer": "Sorry."}]',
    )
    goal = make_goal(get_form("late_checkout"), "happy")
    dialogue = await run_dialogue(student_agent(llm), goal, max_turns=1)
    assert isinstance(dialogue.tape[2], FormError)
    assert "No form is open" in llm.prompts[1].messages[1]["content"]
