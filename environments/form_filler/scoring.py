"""Score a form-filling dialogue against the user's goal, and summarize many scores.

The score goes into the tape's metadata (`task_id`, `outcome`, `reward`, and every figure in
`extra["form_filler"]`), where the store indexes it and evaluation records pick it up.

- `correct`: the goal's form was submitted with exactly the goal's values (or, for a request
  no form covers, nothing was submitted). `outcome` is "success" then, else "wrong_form",
  "wrong_values" or "not_submitted".
- `field_accuracy`: fields whose final value matches the goal, over the fields that the goal
  or the form has a value for.
- `reward`: 1 for a correct dialogue, else half the field accuracy.
- `turns`: messages from the user; `actions`: actions of the assistant.
- `validation_errors`: values and submissions the form rejected.
- `unanswered_questions`: the user's questions whose answer the assistant's next message
  lacks (say, the allowed options of a field).
- `agent_errors`: unparsable model answers, failed LLM calls and impossible actions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from statistics import mean
from typing import Any

from pydantic import BaseModel

from tapeagents.steps import (
    Action,
    AssistantMessage,
    ErrorObservation,
    FinalAnswer,
    LLMFailure,
    ParsingFailure,
    Step,
    UserMessage,
)
from tapeagents.tape import Tape

from .environment import form_state
from .simulator import UserGoal
from .steps import (
    AskUser,
    FieldInvalid,
    FormError,
    SubmissionRefused,
)
from .validation import same_value

__all__ = ["DialogueScore", "apply_score", "score_dialogue", "summarize"]


class DialogueScore(BaseModel):
    """How well one dialogue met its goal (see the module docstring for each figure)."""

    task_id: str
    behaviour: str
    form: str | None
    submitted_form: str | None = None
    completed: bool = False
    """A form was submitted and accepted."""
    correct: bool = False
    field_accuracy: float = 0.0
    turns: int = 0
    actions: int = 0
    validation_errors: int = 0
    questions: int = 0
    unanswered_questions: int = 0
    agent_errors: int = 0
    outcome: str = "not_submitted"
    reward: float = 0.0


def score_dialogue(tape: Tape[Any, Any], goal: UserGoal) -> DialogueScore:
    """Score the assistant's tape of a dialogue against the user's goal."""
    state = form_state(tape)
    submitted = state.submitted
    values = submitted.values if submitted is not None else state.values
    form = goal.get_form()
    if form is None:
        correct = submitted is None
        accuracy = 1.0 if correct else 0.0
        outcome = "success" if correct else "wrong_form"
    else:
        same_form = (submitted.name if submitted else state.form and state.form.name) == form.name
        names = [f.name for f in form.fields if f.name in goal.values or f.name in values]
        extra = [name for name in values if form.field(name) is None]
        right = 0
        if same_form:
            for name in names:
                spec = form.field(name)
                assert spec is not None
                if name in goal.values and name in values:
                    right += same_value(spec, values[name], goal.values[name])
        accuracy = right / (len(names) + len(extra)) if names or extra else 1.0
        correct = submitted is not None and submitted.name == form.name and accuracy == 1.0
        if correct:
            outcome = "success"
        elif submitted is None:
            outcome = "not_submitted"
        else:
            outcome = "wrong_form" if submitted.name != form.name else "wrong_values"
    questions, unanswered = _questions(tape.steps)
    return DialogueScore(
        task_id=goal.id,
        behaviour=goal.behaviour,
        form=goal.form,
        submitted_form=submitted.name if submitted else None,
        completed=submitted is not None,
        correct=correct,
        field_accuracy=round(accuracy, 4),
        turns=sum(isinstance(s, UserMessage) for s in tape.steps),
        actions=sum(isinstance(s, Action) for s in tape.steps),
        validation_errors=sum(isinstance(s, FieldInvalid | SubmissionRefused) for s in tape.steps),
        questions=questions,
        unanswered_questions=unanswered,
        agent_errors=sum(
            isinstance(s, ParsingFailure | LLMFailure | FormError | ErrorObservation)
            for s in tape.steps
        ),
        outcome=outcome,
        reward=1.0 if correct else round(accuracy / 2, 4),
    )


def _said_to_user(step: Step) -> str | None:
    """The text a step shows the user, if it is a message to the user."""
    if isinstance(step, AskUser):
        return step.question
    if isinstance(step, AssistantMessage):
        return step.content
    if isinstance(step, FinalAnswer):
        return step.answer
    return None


def _questions(steps: Sequence[Step]) -> tuple[int, int]:
    asked = unanswered = 0
    for index, step in enumerate(steps):
        if not isinstance(step, UserMessage) or step.metadata.extra.get("intent") != "question":
            continue
        asked += 1
        expects = [str(e).casefold() for e in step.metadata.extra.get("expects", [])]
        reply = next(
            (text for s in steps[index + 1 :] if (text := _said_to_user(s)) is not None), None
        )
        if reply is None or not all(e in reply.casefold() for e in expects):
            unanswered += 1
    return asked, unanswered


def apply_score(tape: Tape[Any, Any], score: DialogueScore) -> None:
    """Write the score into the tape's metadata (task id, outcome, reward, figures)."""
    tape.metadata.task_id = score.task_id
    tape.metadata.outcome = score.outcome
    tape.metadata.reward = score.reward
    tape.metadata.extra["form_filler"] = score.model_dump()


def summarize(scores: Iterable[DialogueScore]) -> dict[str, Any]:
    """Totals and rates over many dialogues, overall and per behaviour."""
    scores = list(scores)
    if not scores:
        return {"dialogues": 0}

    def figures(group: list[DialogueScore]) -> dict[str, Any]:
        return {
            "dialogues": len(group),
            "correct": sum(s.correct for s in group),
            "correct_rate": round(float(mean(s.correct for s in group)), 4),
            "completed_rate": round(float(mean(s.completed for s in group)), 4),
            "field_accuracy": round(mean(s.field_accuracy for s in group), 4),
            "mean_turns": round(mean(s.turns for s in group), 2),
            "validation_errors": sum(s.validation_errors for s in group),
            "questions": sum(s.questions for s in group),
            "unanswered_questions": sum(s.unanswered_questions for s in group),
            "agent_errors": sum(s.agent_errors for s in group),
        }

    by_behaviour: dict[str, list[DialogueScore]] = {}
    for score in scores:
        by_behaviour.setdefault(score.behaviour, []).append(score)
    return {
        **figures(scores),
        "by_behaviour": {name: figures(group) for name, group in sorted(by_behaviour.items())},
    }
