"""The form-filling assistants: a careful teacher, a scripted expert, and a compact student.

- `teacher_agent(llm)`: two `LLMNode`s for a strong model (litellm): `think` writes a short
  reasoning about the latest message, `act` takes one action with native tool calls. Its
  prompt holds the whole conversation, the open form's JSON schema and its values.
- `student_agent(llm)`: one `CompactNode` for a small model (SmolLM2-135M): a prompt of a few
  lines (the open form's remaining fields with their allowed values, the last thing asked, the
  latest message) and one JSON action as the answer. Values to copy appear verbatim in the
  user's message; names, options and formats appear in the prompt; and thanks to the form's
  cursor most actions need no field name at all.
- `expert_agent()`: writes the actions a perfect student would write, from the tape alone
  (it understands the scripted user's phrasing), through an `ExpertNode` that records each
  decision as an LLM call of the compact node: a prompt, and the output that the node's
  `parse` turns into exactly those steps. Its tapes are training data for the student; with
  `slips` it also shows how to recover from mistakes.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import AsyncIterator
from typing import Any

from tapeagents.agent import Agent, NodeOutput
from tapeagents.llm_node import LLMNode
from tapeagents.llms import LLM, LLMCall, Prompt
from tapeagents.llms.base import request_hash
from tapeagents.steps import (
    AssistantMessage,
    Error,
    FinalAnswer,
    Observation,
    ParsingFailure,
    Reasoning,
    Step,
    UserMessage,
)
from tapeagents.tape import Tape

from .catalog import FieldSpec
from .environment import FormState, form_state
from .simulator import (
    CHANGE_TEMPLATES,
    CLEAR_TEMPLATE,
    CONFIRM_PHRASES,
    CORRECT_TEMPLATE,
    QUESTION_PHRASES,
    REFUSE_TEMPLATES,
    SKIP_PHRASES,
    VALUE_TEMPLATES,
    question_kind,
)
from .steps import (
    ASSISTANT_ACTIONS,
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

__all__ = [
    "CompactNode",
    "ExpertNode",
    "compact_messages",
    "expert_action",
    "expert_agent",
    "student_agent",
    "teacher_agent",
]

NO_FORM_ANSWER = "Sorry, there is no form for that request."

# ----------------------------------------------------------------------------- compact prompt

_INSTRUCTION = (
    "Fill in a form with the user. Reply with one JSON action: find_form, open_form, ask_user, "
    "set_field, skip_field, confirm_form, submit_form or final_answer."
)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def compact_state(state: FormState) -> str:
    """The system message of the compact prompt: the task, the actions, the form's state."""
    lines = [_INSTRUCTION]
    if state.form is None:
        lines.append("Form: none")
    else:
        lines.append(f"Form: {state.form.name}")
        lines.append(f"Filled: {', '.join(state.values) or 'nothing'}")
        left = []
        for name in state.remaining:
            spec = state.form.field(name)
            assert spec is not None
            hint = spec.hint()
            left.append(f"{name} ({hint})" if hint else name)
        lines.append(f"Left: {'; '.join(left) or 'nothing'}")
        if state.submitted is not None:
            lines.append("Submitted: yes")
    lines.append(f"Asked: {state.asked or 'nothing'}")
    return "\n".join(lines)


def compact_observation(step: Step) -> str:
    """The latest message or observation, as the compact prompt's user message."""
    if isinstance(step, UserMessage):
        return f"User: {step.content}"
    if isinstance(step, FormCandidates):
        names = ", ".join(form["name"] for form in step.forms)
        return f"Found: {names or 'no form'}"
    if isinstance(step, FormOpened):
        return f"Opened {step.name}."
    if isinstance(step, FieldSet):
        return f"Set {step.field} = {_show(step.value)}."
    if isinstance(step, FieldSkipped):
        return f"Skipped {step.field}."
    if isinstance(step, FieldInvalid):
        return f"Error: {step.error}"
    if isinstance(step, FormSubmitted):
        return f"Submitted {step.name}, confirmation {step.confirmation}."
    if isinstance(step, SubmissionRefused):
        return "Refused: " + " ".join(step.errors)
    if isinstance(step, ParsingFailure):
        return f"Error: your answer could not be used ({step.error}). Answer with one JSON action."
    if isinstance(step, Error | FormError):
        return f"Error: {step.error}"
    return f"{step.kind}: {step.llm_text()}"


def _latest(tape: Tape[Any, Any]) -> Step | None:
    """The last observation (or error) on the tape: what the assistant reacts to now."""
    for step in reversed(tape.steps):
        if isinstance(step, Observation | Error):
            return step
    return None


def compact_messages(tape: Tape[Any, Any]) -> list[dict[str, Any]]:
    """The compact prompt's messages for `tape`: the state, then the latest message."""
    latest = _latest(tape)
    return [
        {"role": "system", "content": compact_state(form_state(tape))},
        {"role": "user", "content": compact_observation(latest) if latest else "User: hello"},
    ]


class CompactNode(LLMNode):
    """One JSON action per turn from a few-line prompt: small models can learn this.

    It parses and inverts exactly like a JSON-mode `LLMNode` with the form actions and
    `FinalAnswer`; only the prompt differs (`compact_messages`). With `structured=True` the
    request also carries the node's `response_schema` (one action per answer), so a local
    model writes only actions that parse, in the exact form of the expert's training examples.
    """

    def __init__(
        self, name: str = "act", *, llm: str = "default", structured: bool = False
    ) -> None:
        super().__init__(
            name,
            steps=(*ASSISTANT_ACTIONS, FinalAnswer),
            llm=llm,
            mode="json",
            structured=structured,
            max_answer_steps=1 if structured else None,
        )

    def make_prompt(self, agent: Agent, tape: Tape[Any, Any]) -> Prompt:
        return Prompt(
            messages=compact_messages(tape),
            response_format=self.response_schema() if self.structured else None,
        )


def student_agent(
    llm: LLM | str = "local", *, name: str = "student", structured: bool = False
) -> Agent:
    """The compact student: one `CompactNode` on `llm` (default: the local SmolLM2-135M).

    Give two students (say, the base model and a fine-tuned one) different names to tell
    their tapes apart in a store. With `structured=True` the model answers under the
    schema of the student's actions (see `CompactNode`): every answer parses.
    """
    return Agent(name, nodes=[CompactNode("act", structured=structured)], llms=llm)


# ----------------------------------------------------------------------------- expert


def _template_regex(template: str, label: str) -> re.Pattern[str]:
    """A pattern that matches lines made from `template` for a field and captures `value`."""
    pattern = re.escape(template)
    pattern = pattern.replace(re.escape("{value}"), r"(?P<value>.+?)")
    pattern = pattern.replace(re.escape("{label}"), re.escape(label))
    return re.compile(rf"^{pattern}$", re.IGNORECASE)


def ask_text(spec: FieldSpec) -> str:
    """The expert's question for a field."""
    return f"What is the {spec.label}?" + ("" if spec.required else " (optional)")


def answer_text(spec: FieldSpec) -> str:
    """The expert's answer to a user's question about a field."""
    kind = question_kind(spec)
    if kind == "enum":
        return "The options are: " + ", ".join(str(o) for o in spec.enum or []) + "."
    if kind == "date":
        return "Please write the date as YYYY-MM-DD."
    if kind == "range":
        low, high = spec.schema_["minimum"], spec.schema_["maximum"]
        return f"It must be between {_show_number(low)} and {_show_number(high)}."
    return f"I need the {spec.label} to fill in the form."


def _show_number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _next(state: FormState) -> Step:
    """Ask for the next remaining field, or confirm when none is left."""
    if state.form is None:
        return FinalAnswer(answer=NO_FORM_ANSWER)
    if not state.remaining:
        return ConfirmForm()
    spec = state.form.field(state.remaining[0])
    assert spec is not None
    return _ask(state, spec, ask_text(spec))


def _ask(state: FormState, spec: FieldSpec, question: str) -> AskUser:
    """Ask about `spec`, naming it only when the cursor (the first empty field) is another."""
    cursor = state.remaining[0] if state.remaining else None
    return AskUser(field=None if spec.name == cursor else spec.name, question=question)


def _here(state: FormState, spec: FieldSpec) -> str | None:
    """The field argument of `set_field`/`skip_field` for `spec`: None for the asked field."""
    return None if spec.name == state.asked else spec.name


def _change(state: FormState, text: str) -> Step | None:
    """A change the user asks for by naming a field ("please change the X to Y")."""
    if state.form is None:
        return None
    for spec in sorted(state.form.fields, key=lambda f: -len(f.label)):
        for template in (*CHANGE_TEMPLATES, CORRECT_TEMPLATE):
            match = _template_regex(template, spec.label).match(text)
            if match:
                return SetField(field=spec.name, value=match["value"])
        if _template_regex(CLEAR_TEMPLATE, spec.label).match(text):
            return SkipField(field=spec.name)
    return None


def _reply_to_user(state: FormState, text: str) -> Step:
    text = text.strip()
    if state.form is None:
        return FindForm(query=text)
    if state.submitted is not None:
        return FinalAnswer(answer="You're welcome. Goodbye!")
    change = _change(state, text)
    if change is not None:
        return change
    spec = state.form.field(state.asked or "")
    if state.asked == "confirm" or spec is None:
        if any(text.casefold() == phrase.casefold() for phrase in CONFIRM_PHRASES):
            return SubmitForm()
        return _next(state)
    if text in SKIP_PHRASES:
        if spec.required:
            return _ask(state, spec, _required(spec))
        return SkipField(field=_here(state, spec))
    if any(_template_regex(t, spec.label).match(text) for t in REFUSE_TEMPLATES):
        return _ask(state, spec, _required(spec))
    if any(text in phrases for phrases in QUESTION_PHRASES.values()):
        return _ask(state, spec, f"{answer_text(spec)} {ask_text(spec)}")
    for template in sorted(VALUE_TEMPLATES, key=len, reverse=True):
        match = _template_regex(template, spec.label).match(text)
        if match:
            return SetField(field=_here(state, spec), value=match["value"])
    return SetField(field=_here(state, spec), value=text)


def _required(spec: FieldSpec) -> str:
    return f"The {spec.label} is required to submit the form. What is the {spec.label}?"


def expert_action(tape: Tape[Any, Any]) -> Step:
    """The next action of a perfect assistant on `tape`, decided from the tape alone."""
    state = form_state(tape)
    latest = _latest(tape)
    if isinstance(latest, UserMessage):
        return _reply_to_user(state, latest.content)
    if isinstance(latest, FormCandidates):
        if not latest.forms:
            return FinalAnswer(answer=NO_FORM_ANSWER)
        return OpenForm(name=latest.forms[0]["name"])
    if isinstance(latest, FieldInvalid) and state.form is not None:
        spec = state.form.field(latest.field)
        if spec is not None:
            return _ask(state, spec, f"{latest.error} {ask_text(spec)}")
    if isinstance(latest, FormSubmitted):
        return FinalAnswer(
            answer=f"Your form was submitted. Confirmation number: {latest.confirmation}."
        )
    return _next(state)


def slip(step: Step, state: FormState, rng: random.Random) -> Step | None:
    """A plausible mistake in place of `step`, or None for steps that have none.

    A `set_field` gets a value with a typo or a misspelt field name; an `ask_user` or a
    `confirm_form` becomes a question about a misspelt field, which the user does not
    understand.
    """
    if isinstance(step, SetField):
        if isinstance(step.value, str) and len(step.value) > 2 and rng.random() < 0.5:
            return SetField(field=step.field, value=step.value[:-1])
        wrong = _misspelt(step.field or state.asked or "", rng)
        return SetField(field=wrong, value=step.value) if wrong else None
    if isinstance(step, AskUser | ConfirmForm):
        if isinstance(step, AskUser):
            name = step.field or (state.remaining[0] if state.remaining else "")
        else:
            name = next(reversed(state.values), "")
        wrong = _misspelt(name, rng)
        if wrong:
            return AskUser(field=wrong, question=f"What is the {wrong.replace('_', ' ')}?")
    return None


def _misspelt(name: str, rng: random.Random) -> str | None:
    if len(name) < 3:
        return None
    cut = rng.randrange(1, len(name))
    wrong = rng.choice([name[:cut] + name[cut + 1 :], name.replace("_", ""), name + "s"])
    return wrong if wrong != name else None


class ExpertNode(CompactNode):
    """A `CompactNode` whose decisions come from `expert_action` instead of a model.

    Each decision is recorded as an `LLMCall` of model "expert": the compact prompt and the
    JSON output that `parse` turns back into the same step, so expert tapes look exactly like
    a student's tapes and export as training data.

    With `slips` > 0 the expert makes that share of its field actions wrong on purpose
    (`slip`), marking them `metadata.extra["slip"] = True`, and recovers the way it would
    from anyone's mistake. A student trained on the recoveries, but not on the slips (export
    with the slips dropped), learns to get back on track after its own mistakes.
    """

    def __init__(self, name: str = "act", *, slips: float = 0.0, seed: int = 0) -> None:
        super().__init__(name)
        self.slips = slips
        self.seed = seed

    async def generate(self, agent: Agent, tape: Tape[Any, Any]) -> AsyncIterator[NodeOutput]:
        step = expert_action(tape)
        parameters: dict[str, Any] = {}
        if self.slips > 0:
            rng = random.Random(f"{self.seed}|{tape.metadata.task_id}|{len(tape)}")
            wrong = slip(step, form_state(tape), rng) if rng.random() < self.slips else None
            if wrong is not None:
                step, parameters = wrong, {"slip": True}
                step.metadata.extra["slip"] = True
        prompt = self.make_prompt(agent, tape)
        output = self.inverse([step])
        call = LLMCall(
            id=request_hash("expert", parameters, prompt),
            model="expert",
            parameters=parameters,
            prompt=prompt,
            output=output,
        )
        yield call
        step.metadata.llm_call_id = call.id
        yield step


def expert_agent(*, slips: float = 0.0, seed: int = 0) -> Agent:
    """The scripted expert teacher (no model; it understands the scripted user's phrasing).

    Args:
        slips: Share of field actions it gets wrong on purpose, then recovers from (see
            `ExpertNode`); 0 for an expert that never errs.
        seed: Seed of the slips.
    """
    return Agent("expert", nodes=[ExpertNode("act", slips=slips, seed=seed)])


# ----------------------------------------------------------------------------- LLM teacher

TEACHER_PROMPT = """You are the assistant of {{ context.company_name }}. You fill in the \
company's forms for customers, carefully and politely.

How to work:
1. When the user asks for something, call find_form with their request, then open_form with \
the form that fits best. If no form fits, say so with final_answer.
2. Ask for one field at a time with ask_user, naming the field.
3. When the user gives a value, call set_field with the value exactly as the user wrote it. \
If the form rejects it, explain the problem to the user and ask again.
4. If the user asks a question, answer it (the allowed values, the format, the range) and \
ask for the field again.
5. The user may skip optional fields (skip_field). Required fields cannot be skipped: say \
that the field is required and ask again.
6. When every field is set or skipped, call confirm_form. If the user changes a value, set \
it and confirm again; when the user agrees, call submit_form.
7. When the form is submitted, give the confirmation number with final_answer."""

THINK_PROMPT = """Before you act, think: in one or two sentences, say what the user or the \
form just told you and what you will do next. Do not call any tool now."""


def _state_text(state: FormState) -> str:
    if state.form is None:
        return "No form is open."
    lines = [
        f"Open form: {json.dumps(state.form.function_spec(), ensure_ascii=False)}",
        f"Values so far: {json.dumps(state.values, ensure_ascii=False)}",
        f"Skipped: {', '.join(sorted(state.skipped)) or 'none'}",
        f"Fields left: {', '.join(state.remaining) or 'none'}",
    ]
    if state.submitted is not None:
        lines.append(f"Submitted: confirmation {state.submitted.confirmation}")
    return "\n".join(lines)


class _TeacherNode(LLMNode):
    """An `LLMNode` whose system message ends with the form's current state."""

    def make_prompt(self, agent: Agent, tape: Tape[Any, Any]) -> Prompt:
        prompt = super().make_prompt(agent, tape)
        messages = list(prompt.messages)
        state = _state_text(form_state(tape))
        if messages and messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{state}"}
        return prompt.model_copy(update={"messages": messages})


def teacher_agent(llm: LLM | str, *, think: bool = True) -> Agent:
    """The careful teacher for a strong model: `think` (reasoning), then `act` (one action).

    With `think=False` the teacher is the `act` node alone and writes only form actions and
    `final_answer` (no free text): its tapes then export as training data for the student,
    whose compact node has the same name and actions.

    Example:
        >>> from tapeagents.llms import ScriptedLLM
        >>> agent = teacher_agent(ScriptedLLM(["ok"]))
        >>> [node.name for node in agent.nodes]
        ['think', 'act']
    """
    actions: tuple[type[Step], ...] = (*ASSISTANT_ACTIONS, FinalAnswer)
    act = _TeacherNode(
        "act",
        system_prompt=TEACHER_PROMPT,
        steps=(*actions, AssistantMessage) if think else actions,
    )
    if not think:
        return Agent("teacher", nodes=[act], llms=llm)
    thinker = _TeacherNode(
        "think",
        system_prompt=f"{TEACHER_PROMPT}\n\n{THINK_PROMPT}",
        steps=(Reasoning,),
        text_step=Reasoning,
    )
    return Agent("teacher", nodes=[thinker, act], llms=llm)
