"""The step kinds of form filling: the assistant's actions and the environment's observations.

Actions: `find_form`, `open_form`, `set_field`, `skip_field` and `submit_form` go to the
environment; `ask_user` and `confirm_form` go to the user (they await input: the run stops and
the user's reply arrives as a `UserMessage`). The assistant ends a dialogue with the core
`FinalAnswer`. Each environment action is answered by exactly one observation below.

The open form has a cursor, like the focus of a form on screen: `ask_user` without a field asks
about the first empty field, and `set_field` or `skip_field` without a field act on the field
the assistant last asked about. Naming the field is needed only to change another one.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from tapeagents.steps import Action, Observation

__all__ = [
    "ASSISTANT_ACTIONS",
    "AskUser",
    "ConfirmForm",
    "FieldInvalid",
    "FieldSet",
    "FieldSkipped",
    "FindForm",
    "FormCandidates",
    "FormError",
    "FormOpened",
    "FormSubmitted",
    "OpenForm",
    "SetField",
    "SkipField",
    "SubmissionRefused",
    "SubmitForm",
]


# ----------------------------------------------------------------------------- actions


class FindForm(Action):
    """Search the company's forms for the one that fits the user's request."""

    kind: Literal["find_form"] = "find_form"
    query: str
    """The user's request, or keywords from it."""


class OpenForm(Action):
    """Open a form by name and show its fields; a new form starts empty."""

    kind: Literal["open_form"] = "open_form"
    name: str
    """The form's name, as `find_form` listed it."""


class AskUser(Action):
    """Ask the user a question (usually for one field's value) and wait for the reply."""

    kind: Literal["ask_user"] = "ask_user"
    awaits_input: ClassVar[bool] = True
    field: str | None = None
    """The field the question is about (default: the first field with no value)."""
    question: str
    """The text shown to the user."""


class SetField(Action):
    """Set or change a field of the open form to the value the user gave."""

    kind: Literal["set_field"] = "set_field"
    field: str | None = None
    """The field's name (default: the field last asked about)."""
    value: str | int | float | bool
    """The value, as the user gave it; the form converts and checks it."""


class SkipField(Action):
    """Leave an optional field empty because the user does not want to fill it."""

    kind: Literal["skip_field"] = "skip_field"
    field: str | None = None
    """The field's name (default: the field last asked about)."""


class ConfirmForm(Action):
    """Show the user every value of the open form and ask whether to submit it."""

    kind: Literal["confirm_form"] = "confirm_form"
    awaits_input: ClassVar[bool] = True


class SubmitForm(Action):
    """Submit the open form; it is refused, with the reasons, if any value is missing."""

    kind: Literal["submit_form"] = "submit_form"


ASSISTANT_ACTIONS: tuple[type[Action], ...] = (
    FindForm,
    OpenForm,
    AskUser,
    SetField,
    SkipField,
    ConfirmForm,
    SubmitForm,
)
"""The form-filling actions, in the order prompts list them (agents add `FinalAnswer`)."""

# ----------------------------------------------------------------------------- observations


class FormCandidates(Observation):
    """The forms that match a `find_form` query, best first (empty when none does)."""

    kind: Literal["form_candidates"] = "form_candidates"
    query: str
    forms: list[dict[str, str]] = Field(default_factory=list)
    """`{"name": ..., "description": ...}` for each matching form."""


class FormOpened(Observation):
    """A form is open: its description, the JSON schema of its fields and its values."""

    kind: Literal["form_opened"] = "form_opened"
    name: str
    description: str
    parameters: dict[str, Any]
    values: dict[str, Any] = Field(default_factory=dict)
    """The values it holds: empty for a new form, kept when the open form is opened again."""
    skipped: list[str] = Field(default_factory=list)
    """Optional fields left empty so far (when the open form is opened again)."""


class FieldSet(Observation):
    """A field now holds this value (converted to the field's type)."""

    kind: Literal["field_set"] = "field_set"
    field: str
    value: str | int | float | bool


class FieldSkipped(Observation):
    """An optional field is left empty."""

    kind: Literal["field_skipped"] = "field_skipped"
    field: str


class FieldInvalid(Observation):
    """A value does not fit its field; the field keeps its previous value."""

    kind: Literal["field_invalid"] = "field_invalid"
    field: str
    value: Any = None
    error: str


class FormSubmitted(Observation):
    """The form was accepted."""

    kind: Literal["form_submitted"] = "form_submitted"
    name: str
    values: dict[str, Any]
    confirmation: str
    """The confirmation number the company gives."""


class SubmissionRefused(Observation):
    """The form was not accepted; `errors` says what to fix."""

    kind: Literal["submission_refused"] = "submission_refused"
    name: str
    errors: list[str]


class FormError(Observation):
    """An action could not be done (no such form or field, no form open, ...)."""

    kind: Literal["form_error"] = "form_error"
    error: str
