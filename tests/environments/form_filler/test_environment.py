"""The environment finds, opens, fills and submits forms; its state is the tape's."""

from __future__ import annotations

from typing import Any

from tapeagents.environments.form_filler import (
    FieldInvalid,
    FieldSet,
    FieldSkipped,
    FindForm,
    FormCandidates,
    FormError,
    FormFillerEnvironment,
    FormOpened,
    FormSubmitted,
    OpenForm,
    SetField,
    SkipField,
    SubmissionRefused,
    SubmitForm,
    form_state,
)

from tapeagents import Agent, ErrorObservation, Node, Tape, ToolCall, UserMessage, run_sync
from tapeagents.environment import react_sync

ENV = FormFillerEnvironment.for_company("northwind")


def act(tape: Tape[Any, Any], action) -> Any:
    """Append the action and the environment's observation, as the run loop does."""
    tape.append(action)
    observation = react_sync(ENV, action, tape)
    tape.append(observation)
    assert observation.action_id == action.metadata.id
    return observation


def opened(form: str = "buy_gift_card") -> Tape[Any, Any]:
    tape: Tape[Any, Any] = Tape(steps=[UserMessage(content="I want a gift card")])
    assert isinstance(act(tape, OpenForm(name=form)), FormOpened)
    return tape


def test_find_form_lists_the_best_matches_first() -> None:
    tape: Tape[Any, Any] = Tape()
    found = act(tape, FindForm(query="I'd like to buy a gift card for my sister"))
    assert isinstance(found, FormCandidates)
    assert found.forms[0]["name"] == "buy_gift_card"
    assert act(tape, FindForm(query="weather tomorrow?")).forms == []


def test_open_form_shows_the_schema_and_unknown_forms_are_errors() -> None:
    tape = opened()
    view = tape[-1]
    assert view.parameters["properties"]["amount"]["type"] == "integer"
    error = act(tape, OpenForm(name="order_pizza"))
    assert isinstance(error, FormError)
    assert "no form called 'order_pizza'" in error.error and "buy_gift_card" in error.error


def test_fill_change_skip_and_submit() -> None:
    tape = opened()
    assert act(tape, SetField(field="amount", value="50")).value == 50
    assert act(tape, SetField(field="amount", value=75)).value == 75  # a change
    act(tape, SetField(field="recipient_name", value="Chen Wei"))
    act(tape, SetField(field="recipient_email", value="chen.wei@example.net"))
    act(tape, SetField(field="delivery_date", value="2025-06-15"))
    assert isinstance(act(tape, SkipField(field="gift_message")), FieldSkipped)
    state = form_state(tape)
    assert state.remaining == [] and state.skipped == {"gift_message"}
    done = act(tape, SubmitForm())
    assert isinstance(done, FormSubmitted)
    assert done.values == {
        "amount": 75,
        "recipient_name": "Chen Wei",
        "recipient_email": "chen.wei@example.net",
        "delivery_date": "2025-06-15",
    }
    assert done.confirmation.startswith("NO-")
    again = act(tape, SubmitForm())
    assert isinstance(again, FormError) and "already submitted" in again.error


def test_an_incomplete_form_is_refused_with_the_reasons() -> None:
    tape = opened()
    act(tape, SetField(field="amount", value="50"))
    refused = act(tape, SubmitForm())
    assert isinstance(refused, SubmissionRefused)
    assert refused.errors == [
        "The recipient name is required.",
        "The recipient email is required.",
        "The delivery date is required.",
    ]


def test_invalid_values_and_misuse_become_observations() -> None:
    tape: Tape[Any, Any] = Tape()
    assert "No form is open" in act(tape, SetField(field="amount", value="5")).error
    tape = opened()
    invalid = act(tape, SetField(field="delivery_date", value="06/15/2025"))
    assert isinstance(invalid, FieldInvalid) and "YYYY-MM-DD" in invalid.error
    assert "delivery_date" not in form_state(tape).values
    assert "no field 'colour'" in act(tape, SetField(field="colour", value="red")).error
    required = act(tape, SkipField(field="amount"))
    assert isinstance(required, FieldInvalid) and "required" in required.error
    assert isinstance(react_sync(ENV, ToolCall(name="rm"), tape), ErrorObservation)


def test_the_state_is_the_tape_so_a_fork_resumes_from_its_prefix() -> None:
    tape = opened()
    act(tape, SetField(field="amount", value="50"))
    act(tape, SetField(field="recipient_name", value="Chen Wei"))
    fork = tape.fork(at=len(tape) - 2)  # before the name was set
    assert form_state(fork).values == {"amount": 50}
    assert isinstance(act(fork, SetField(field="recipient_name", value="Dana")), FieldSet)
    assert form_state(fork).values["recipient_name"] == "Dana"
    assert form_state(tape).values["recipient_name"] == "Chen Wei"
    act(tape, OpenForm(name="track_order"))  # another form starts empty
    assert form_state(tape).values == {} and form_state(tape).form.name == "track_order"


class Script(Node):
    """Emits the given actions, one per turn."""

    def __init__(self, actions: list[Any]) -> None:
        super().__init__("script")
        self.actions = actions

    async def generate(self, agent, tape):
        yield self.actions.pop(0)


def test_every_action_gets_exactly_one_observation_in_a_run() -> None:
    from tapeagents import FinalAnswer

    actions = [
        FindForm(query="gift card"),
        OpenForm(name="buy_gift_card"),
        SetField(field="amount", value="1000000"),
        SubmitForm(),
        FinalAnswer(answer="bye"),
    ]
    agent = Agent("scripted", nodes=[Script(actions)])
    result = run_sync(agent, "I want a gift card", ENV)
    assert result.reason == "stopped"
    assert result.tape.kinds() == [
        "user",
        "find_form",
        "form_candidates",
        "open_form",
        "form_opened",
        "set_field",
        "field_invalid",
        "submit_form",
        "submission_refused",
        "final_answer",
    ]
    assert result.tape.pending_actions() == []


def test_the_cursor_names_the_field_when_the_action_does_not() -> None:
    from tapeagents.environments.form_filler import AskUser

    tape = opened()
    tape.append(AskUser(question="How much should the card be worth?"))
    assert form_state(tape).asked == "amount"  # the first field with no value
    assert act(tape, SetField(value="50")).field == "amount"
    tape.append(AskUser(question="Who is it for?"))
    assert form_state(tape).asked == "recipient_name"
    act(tape, SetField(value="Chen Wei"))
    tape.append(AskUser(field="gift_message", question="A message?"))
    assert isinstance(act(tape, SkipField()), FieldSkipped)
    assert form_state(tape).skipped == {"gift_message"}


def test_a_field_is_needed_when_nothing_was_asked() -> None:
    tape = opened()
    error = act(tape, SetField(value="50"))
    assert isinstance(error, FormError) and "name the field" in error.error


def test_opening_the_open_form_again_keeps_its_values() -> None:
    tape = opened()
    act(tape, SetField(field="amount", value="50"))
    act(tape, SkipField(field="gift_message"))
    again = act(tape, OpenForm(name="buy_gift_card"))
    assert again.values == {"amount": 50} and again.skipped == ["gift_message"]
    assert form_state(tape).values == {"amount": 50}
    act(tape, OpenForm(name="track_order"))
    assert act(tape, OpenForm(name="buy_gift_card")).values == {}  # another form was opened
