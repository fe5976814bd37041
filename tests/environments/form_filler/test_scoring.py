"""Scores follow from the goal and land in the tape's metadata, the store and eval records."""

from __future__ import annotations

from typing import Any

from tapeagents.environments.form_filler import (
    AskUser,
    FormOpened,
    FormSubmitted,
    expert_agent,
    get_form,
    make_goal,
    make_goals,
    run_dialogue,
    score_dialogue,
    summarize,
)

from tapeagents import Tape, UserMessage

GOAL = make_goal(get_form("late_checkout"), "happy")


def submitted(values: dict[str, Any], form: str = "late_checkout") -> Tape[Any, Any]:
    spec = get_form(form)
    return Tape(
        steps=[
            UserMessage(content=GOAL.request),
            FormOpened(name=spec.name, description=spec.description, parameters=spec.parameters),
            FormSubmitted(name=form, values=values, confirmation="X-1"),
        ]
    )


def test_exact_values_are_a_success_worth_one() -> None:
    score = score_dialogue(submitted(dict(GOAL.values)), GOAL)
    assert (score.correct, score.outcome, score.reward, score.field_accuracy) == (
        True,
        "success",
        1.0,
        1.0,
    )


def test_a_wrong_value_costs_its_share_of_accuracy_and_half_the_reward() -> None:
    values = {**GOAL.values, "room_number": "999"}
    score = score_dialogue(submitted(values), GOAL)
    n = len(GOAL.values)
    assert not score.correct and score.outcome == "wrong_values"
    assert score.field_accuracy == round((n - 1) / n, 4)
    assert score.reward == round((n - 1) / n / 2, 4)


def test_an_extra_value_and_a_wrong_form_are_failures() -> None:
    extra = score_dialogue(submitted({**GOAL.values, "notes": "hi"}), GOAL)
    skip = make_goal(get_form("late_checkout"), "skip_optional")
    if "notes" not in GOAL.values:
        assert extra.outcome == "wrong_values"
    wrong = score_dialogue(submitted({"amount": 5}, form="buy_gift_card"), skip)
    assert wrong.outcome == "wrong_form" and wrong.field_accuracy == 0


def test_nothing_submitted() -> None:
    score = score_dialogue(Tape(steps=[UserMessage(content="hi")]), GOAL)
    assert score.outcome == "not_submitted" and score.reward == 0 and score.turns == 1


def test_a_question_is_answered_only_if_the_reply_says_what_was_asked() -> None:
    question = UserMessage(content="What are the options?")
    question.metadata.extra.update(intent="question", expects=["13:00", "14:00", "15:00"])
    good = Tape(steps=[question, AskUser(field="checkout_time", question="13:00, 14:00 or 15:00?")])
    bad = Tape(steps=[question, AskUser(field="checkout_time", question="Which time?")])
    assert score_dialogue(good, GOAL).unanswered_questions == 0
    assert score_dialogue(bad, GOAL).questions == 1
    assert score_dialogue(bad, GOAL).unanswered_questions == 1


async def test_the_score_lands_in_metadata_the_store_and_eval_records(tmp_path) -> None:
    from tapeagents.export import eval_records
    from tapeagents.store import TapeFilter, TapeStore

    store = TapeStore(f"sqlite:///{tmp_path / 'tapes.db'}")
    dialogue = await run_dialogue(expert_agent(), GOAL, store=store)
    tape = dialogue.tape
    assert tape.metadata.task_id == GOAL.id and tape.metadata.outcome == "success"
    assert tape.metadata.extra["form_filler"]["turns"] == dialogue.score.turns
    stored = store.get(tape.id)
    assert stored.model_dump_json() == tape.model_dump_json()
    assert [s.id for s in store.list(TapeFilter(task_id=GOAL.id, outcome="success"))] == [tape.id]
    assert store.status(tape.id) == "stopped"
    (record,) = list(eval_records(store))
    assert (record.task_id, record.outcome, record.reward) == (GOAL.id, "success", 1.0)
    assert record.subject == "expert@expert"
    assert record.llm_calls == dialogue.score.actions + 1  # and the final answer


async def test_summary_over_behaviours() -> None:
    from tapeagents.environments.form_filler import evaluate

    dialogues = await evaluate(expert_agent(), make_goals(company="harborview"))
    summary = summarize(d.score for d in dialogues)
    assert summary["dialogues"] == len(dialogues) and summary["correct_rate"] == 1.0
    assert set(summary["by_behaviour"]) == {d.score.behaviour for d in dialogues}
    assert summary["by_behaviour"]["invalid_value"]["validation_errors"] == 5
