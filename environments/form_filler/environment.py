"""`FormFillerEnvironment`: finds, opens, fills in and submits a company's forms.

The environment keeps no state of its own: the open form and its values are read from the
tape's observations (`form_state`), so any tape, prefix or fork of one can be resumed, and two
dialogues can share one environment.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tapeagents.environment import Environment
from tapeagents.steps import Action, Observation, Step
from tapeagents.tape import Tape

from .catalog import Form, forms, get_company, search_forms
from .steps import (
    AskUser,
    ConfirmForm,
    FieldInvalid,
    FieldSet,
    FieldSkipped,
    FindForm,
    FormCandidates,
    FormError,
    FormOpened,
    FormSubmitted,
    OpenForm,
    SetField,
    SkipField,
    SubmissionRefused,
    SubmitForm,
)
from .validation import FieldError, check_value, missing_fields

__all__ = ["FormFillerEnvironment", "FormState", "form_state"]


@dataclass
class FormState:
    """Where a dialogue stands, as its tape says: the open form, its values, what was asked."""

    form: Form | None = None
    """The open form (rebuilt from its `form_opened` observation), or None."""
    values: dict[str, Any] = field(default_factory=dict)
    """Values set so far, converted to the fields' types."""
    skipped: set[str] = field(default_factory=set)
    """Optional fields the user chose to leave empty."""
    asked: str | None = None
    """What the assistant last asked the user: a field name (an `ask_user` without one asks
    about the first field with no value), "confirm", or "" for a question about no field;
    None before the first question."""
    searched: bool = False
    """Whether the assistant has searched for a form."""
    submitted: FormSubmitted | None = None
    """The accepted submission, once there is one."""

    @property
    def remaining(self) -> list[str]:
        """Fields of the open form with no value that were not skipped, in form order."""
        if self.form is None:
            return []
        done = self.values.keys() | self.skipped
        return [f.name for f in self.form.fields if f.name not in done]


def form_state(tape: Tape[Any, Any] | Sequence[Step]) -> FormState:
    """The state of the form-filling dialogue recorded on `tape` (or a list of its steps)."""
    state = FormState()
    for step in tape.steps if isinstance(tape, Tape) else tape:
        if isinstance(step, FormOpened):
            state.form = Form(
                name=step.name, description=step.description, parameters=step.parameters
            )
            state.values, state.skipped = dict(step.values), set(step.skipped)
            state.submitted = None
        elif isinstance(step, FieldSet):
            state.values[step.field] = step.value
            state.skipped.discard(step.field)
        elif isinstance(step, FieldSkipped):
            state.values.pop(step.field, None)
            state.skipped.add(step.field)
        elif isinstance(step, FormSubmitted):
            state.submitted = step
        elif isinstance(step, AskUser):
            state.asked = step.field or (state.remaining[0] if state.remaining else "")
        elif isinstance(step, ConfirmForm):
            state.asked = "confirm"
        elif isinstance(step, FindForm):
            state.searched = True
    return state


class FormFillerEnvironment(Environment):
    """Answers the form actions for a set of forms (usually one company's).

    Args:
        available: The forms the assistant can find and open.

    Example:
        >>> env = FormFillerEnvironment.for_company("northwind")
        >>> sorted(form.name for form in env.forms)[:2]
        ['buy_gift_card', 'join_loyalty_program']
    """

    def __init__(self, available: Sequence[Form]) -> None:
        self.forms = list(available)
        self._by_name = {form.name: form for form in self.forms}

    @classmethod
    def for_company(cls, company: str) -> FormFillerEnvironment:
        """The environment with one company's forms."""
        return cls(get_company(company).forms)

    @classmethod
    def all_forms(cls) -> FormFillerEnvironment:
        """The environment with every company's forms."""
        return cls(forms())

    async def react(self, action: Action, tape: Tape[Any, Any]) -> Observation:
        if isinstance(action, FindForm):
            found = search_forms(action.query, self.forms)
            return FormCandidates(
                query=action.query,
                forms=[{"name": f.name, "description": f.description} for f in found],
            )
        if isinstance(action, OpenForm):
            form = self._by_name.get(action.name)
            if form is None:
                known = ", ".join(self._by_name) or "none"
                return FormError(
                    error=f"There is no form called {action.name!r}. Use find_form to search; "
                    f"the forms are: {known}."
                )
            state = form_state(tape)
            again = state.form is not None and state.form.name == form.name
            keep = again and state.submitted is None  # reopening shows the form, not a new one
            return FormOpened(
                name=form.name,
                description=form.description,
                parameters=form.parameters,
                values=dict(state.values) if keep else {},
                skipped=sorted(state.skipped) if keep else [],
            )
        if isinstance(action, SetField | SkipField | SubmitForm):
            state = form_state(tape)
            if state.form is None:
                return FormError(error="No form is open. Open one with open_form first.")
            if state.submitted is not None:
                return FormError(
                    error=f"The {state.form.name} form was already submitted "
                    f"(confirmation {state.submitted.confirmation})."
                )
            if isinstance(action, SubmitForm):
                return self._submit(state)
            name = action.field or state.asked
            spec = state.form.field(name or "")
            if spec is None:
                names = ", ".join(f.name for f in state.form.fields)
                problem = (
                    f"has no field {name!r}"
                    if action.field
                    else "has no field the user was asked about; name the field"
                )
                return FormError(
                    error=f"The {state.form.name} form {problem}; its fields are: {names}."
                )
            if isinstance(action, SkipField):
                if spec.required:
                    return FieldInvalid(
                        field=spec.name,
                        error=f"The {spec.label} is required and cannot be skipped.",
                    )
                return FieldSkipped(field=spec.name)
            try:
                value = check_value(spec, action.value)
            except FieldError as error:
                return FieldInvalid(field=spec.name, value=action.value, error=str(error))
            return FieldSet(field=spec.name, value=value)
        return await super().react(action, tape)

    def _submit(self, state: FormState) -> Observation:
        assert state.form is not None
        form = self._by_name.get(state.form.name, state.form)  # our copy is authoritative
        errors = [f"The {f.label} is required." for f in missing_fields(form, state.values)]
        if errors:
            return SubmissionRefused(name=form.name, errors=errors)
        payload = json.dumps([form.name, state.values], sort_keys=True, default=str)
        digest = hashlib.sha256(payload.encode()).hexdigest()[:6].upper()
        prefix = (form.company or form.name)[:2].upper()
        return FormSubmitted(
            name=state.form.name, values=dict(state.values), confirmation=f"{prefix}-{digest}"
        )
