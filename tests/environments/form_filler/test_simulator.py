"""The simulated user plays its hidden goal, on its own tape, with each behaviour."""

from __future__ import annotations

from typing import Any

import pytest
from tapeagents.environments.form_filler import (
    BEHAVIOURS,
    UserGoal,
    expert_agent,
    forms,
    get_form,
    llm_user,
    make_goal,
    make_goals,
    run_dialogue,
)
from tapeagents.environments.form_filler.dialogue import GREETING
from tapeagents.environments.form_filler.simulator import scripted_reply

from tapeagents import AssistantMessage, Tape, UserMessage
from tapeagents.llms import ScriptedLLM


def intents(dialogue) -> list[str]:
    return [s.metadata.extra.get("intent") for s in dialogue.tape if isinstance(s, UserMessage)]


def test_goals_are_deterministic_and_hide_values_the_form_accepts() -> None:
    assert make_goals("test") == make_goals("test")
    assert len(make_goals("test")) == len(forms("test")) * len(BEHAVIOURS)
    goal = make_goal(get_form("book_room"), "happy", seed=3)
    assert goal.id == "harborview/book_room/happy/3"
    assert set(goal.values) == {f.name for f in get_form("book_room").fields}
    skip = make_goal(get_form("book_room"), "skip_optional")
    assert "special_requests" not in skip.values
    assert make_goal(get_form("book_room"), "happy", seed=1) != make_goal(
        get_form("book_room"), "happy", seed=2
    )


async def test_happy_path() -> None:
    goal = make_goal(get_form("late_checkout"), "happy")
    dialogue = await run_dialogue(expert_agent(), goal)
    assert dialogue.reason == "stopped" and dialogue.score.correct
    assert intents(dialogue) == ["request"] + ["value"] * len(goal.values) + ["confirm"]


async def test_invalid_value_then_the_right_one() -> None:
    goal = make_goal(get_form("book_room"), "invalid_value")
    dialogue = await run_dialogue(expert_agent(), goal)
    assert dialogue.score.correct and dialogue.score.validation_errors == 1
    first = next(s for s in dialogue.tape if s.metadata.extra.get("intent") == "invalid")
    assert goal.first_value in first.content
    invalid = next(s for s in dialogue.tape if s.kind == "field_invalid")
    assert invalid.field == goal.field


async def test_asks_a_question_and_expects_an_answer() -> None:
    goal = make_goal(get_form("report_bug"), "asks_question")
    dialogue = await run_dialogue(expert_agent(), goal)
    question = next(s for s in dialogue.tape if s.metadata.extra.get("intent") == "question")
    assert question.metadata.extra["expects"]
    assert dialogue.score.questions == 1 and dialogue.score.unanswered_questions == 0


async def test_changes_mind_when_asked_to_confirm() -> None:
    goal = make_goal(get_form("request_demo"), "changes_mind")
    dialogue = await run_dialogue(expert_agent(), goal)
    assert "change" in intents(dialogue)
    assert goal.first_value != goal.values[goal.field]
    assert dialogue.score.correct
    submitted = next(s for s in dialogue.tape if s.kind == "form_submitted")
    assert str(submitted.values[goal.field]).casefold() == goal.values[goal.field].casefold()


async def test_refuses_a_required_value_until_told_it_is_required() -> None:
    goal = make_goal(get_form("cancel_subscription"), "refuses_value")
    dialogue = await run_dialogue(expert_agent(), goal)
    said = intents(dialogue)
    assert said.index("refuse") < len(said) - 1 and dialogue.score.correct
    answer = dialogue.tape[
        dialogue.tape.steps.index(
            next(s for s in dialogue.tape if s.metadata.extra.get("intent") == "refuse")
        )
        + 1
    ]
    assert "required" in answer.question


async def test_skips_optional_fields() -> None:
    goal = make_goal(get_form("buy_licenses"), "skip_optional")
    dialogue = await run_dialogue(expert_agent(), goal)
    assert "skip" in intents(dialogue) and dialogue.score.correct
    assert "po_number" not in next(s for s in dialogue.tape if s.kind == "form_submitted").values


@pytest.mark.parametrize("behaviour", [*BEHAVIOURS, "nonsense"])
async def test_the_user_tape_is_the_same_dialogue_from_the_other_side(behaviour) -> None:
    goal = make_goal(get_form("event_inquiry"), behaviour)
    dialogue = await run_dialogue(expert_agent(), goal)
    user_side = dialogue.user_tape
    assert user_side[0].content == GREETING
    mine = [s.content for s in user_side if isinstance(s, AssistantMessage)]
    theirs = [s.content for s in dialogue.tape if isinstance(s, UserMessage)]
    assert mine == theirs
    questions = [s.question for s in dialogue.tape if s.kind == "ask_user"]
    heard = [s.content for s in user_side[1:] if isinstance(s, UserMessage)]
    assert [text for text in heard if not text.startswith("Please check")] == questions
    assert user_side.metadata.extra["dialogue"] == dialogue.tape.id


async def test_the_llm_user_reads_its_goal_and_talks_through_its_model() -> None:
    goal = make_goal(get_form("late_checkout"), "happy")
    lines = iter([goal.request, goal.values["reservation_code"], "I'm done, bye."])
    llm = ScriptedLLM(lambda prompt: next(lines))
    user = llm_user(llm)
    dialogue = await run_dialogue(expert_agent(), goal, user=user, max_turns=3)
    system = llm.prompts[0].messages[0]["content"]
    assert goal.request in system and goal.values["room_number"] in system
    assert llm.prompts[1].messages[-1]["content"] == "What is the reservation code?"
    said = [s.content for s in dialogue.tape if isinstance(s, UserMessage)]
    assert said == [goal.request, goal.values["reservation_code"], "I'm done, bye."]
    assert dialogue.reason == "max_turns" and not dialogue.score.completed
    assert dialogue.tape.metadata.outcome == "not_submitted"


async def test_an_unclear_question_gets_an_unclear_answer() -> None:
    goal = make_goal(get_form("late_checkout"), "happy")
    tape: Any = Tape(steps=[UserMessage(content=GREETING)])
    tape.append(AssistantMessage(content=goal.request))
    tape.append(UserMessage(content="What is your favourite colour?"))
    text, extra = scripted_reply(goal, tape)
    assert extra["intent"] == "unclear"


def test_goal_round_trips_through_json() -> None:
    goal = make_goal(get_form("book_room"), "changes_mind")
    assert UserGoal.model_validate_json(goal.model_dump_json()) == goal


def test_varied_goals_make_up_valid_values_the_forms_do_not_list() -> None:
    from tapeagents.environments.form_filler import check_value

    goals = make_goals("train", vary=True)
    made_up = 0
    for goal in goals:
        form = get_form(goal.form)
        for name, value in goal.values.items():
            spec = form.field(name)
            check_value(spec, value)
            made_up += value not in [str(e) for e in spec.examples] + ["yes", "no"]
    assert made_up > len(goals)
    assert make_goals("train", vary=True) == goals
