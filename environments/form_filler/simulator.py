"""The simulated user: plays a customer who wants one form filled in with values in mind.

A `UserGoal` is the user's hidden goal: the company, the form (None when they ask for
something no form covers), the values they will give and one behaviour:

- `happy`: answers every question with the right value;
- `invalid_value`: first gives a value the form rejects (a date as 03/14/2025, ...), then the
  right one when asked again;
- `skip_optional`: declines every optional field;
- `asks_question`: answers a question about one field with a question ("What are the
  options?") and expects the assistant to answer it;
- `changes_mind`: gives one value, then changes it when asked to confirm;
- `refuses_value`: first refuses a required field, then gives it when told it is required;
- `nonsense`: answers one field with gibberish, then with the right value;
- `unknown_form`: asks for something no form covers.

The simulator is an agent with its own tape (`scripted_user()` or `llm_user(llm)`): what the
assistant says arrives on it as `UserMessage`s, and its `AssistantMessage`s are the user's
words, which the dialogue driver adds to the assistant's tape as `UserMessage`s. The scripted
user is deterministic and marks each reply's intent in `metadata.extra` (the scorer uses it).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from tapeagents.agent import Agent, Node, NodeOutput
from tapeagents.errors import UsageError
from tapeagents.llm_node import LLMNode
from tapeagents.llms import LLM
from tapeagents.steps import AssistantMessage, UserMessage
from tapeagents.tape import Tape

from .catalog import FieldSpec, Form, Split, forms, get_form
from .validation import FieldError, check_value, same_value

__all__ = [
    "BEHAVIOURS",
    "Behaviour",
    "UserGoal",
    "expected_answers",
    "llm_user",
    "make_goal",
    "make_goals",
    "scripted_reply",
    "scripted_user",
    "user_instructions",
]

Behaviour = Literal[
    "happy",
    "invalid_value",
    "skip_optional",
    "asks_question",
    "changes_mind",
    "refuses_value",
    "nonsense",
    "unknown_form",
]
BEHAVIOURS: tuple[Behaviour, ...] = (
    "happy",
    "invalid_value",
    "skip_optional",
    "asks_question",
    "changes_mind",
    "refuses_value",
)
"""The behaviours of the case study (the bad-input ones, `nonsense` and `unknown_form`, are
used by the tests)."""


class UserGoal(BaseModel):
    """What the simulated user wants; the assistant never sees it."""

    id: str
    """Task id: `company/form/behaviour/seed`."""
    company: str
    form: str | None
    """The form the user needs; None when they ask for something no form covers."""
    request: str
    """The user's first message."""
    values: dict[str, str] = Field(default_factory=dict)
    """The values the form should end up with, as the user types them; optional fields the
    user does not want to fill are absent."""
    behaviour: Behaviour = "happy"
    field: str | None = None
    """The field the behaviour is about."""
    first_value: str | None = None
    """What the user says first for `field`: an invalid value, gibberish, or the value they
    change later."""

    def get_form(self) -> Form | None:
        return get_form(self.form) if self.form else None


# ----------------------------------------------------------------------------- phrases
# The scripted user's lines. The expert teacher reads them with the patterns below, so the
# values a student must copy always appear verbatim in the user's message.

VALUE_TEMPLATES = ("{value}", "It's {value}.", "The {label} is {value}.", "{value}, please.")
BOOLEAN_TEMPLATES = ("{value}", "{value}, please.")
SKIP_PHRASES = ("Skip that one, please.", "I'd rather leave that empty.", "No need, skip it.")
REFUSE_TEMPLATES = ("I'd rather not give you the {label}.", "I prefer not to share the {label}.")
CONFIRM_PHRASES = ("Yes, please submit it.", "Looks good, submit it.", "Yes, that's right.")
CHANGE_TEMPLATES = (
    "Actually, please change the {label} to {value}.",
    "Wait, the {label} should be {value}.",
)
CORRECT_TEMPLATE = "Please set the {label} to {value}."
CLEAR_TEMPLATE = "Please leave the {label} empty."
UNCLEAR_PHRASE = "Sorry, I'm not sure what you need from me."
DONE_PHRASE = "Thanks, that's all."
NO_FORM_PHRASE = "Oh well, thanks anyway."
NONSENSE_VALUES = ("blorp zzz", "purple monkey dishwasher", "qwerty asdf")
UNKNOWN_REQUESTS = (
    "Can you recommend a good pizza place?",
    "What will the weather be like tomorrow?",
    "I'd like to adopt a cat.",
)
QUESTION_PHRASES = {
    "enum": ("What are the options?", "Which options do I have?"),
    "date": ("What date format do you need?", "How should I write the date?"),
    "range": ("What values are allowed?", "Is there a limit?"),
}


def _pick(options: Sequence[str], *keys: object) -> str:
    """A deterministic choice among `options`, keyed by `keys` (stable across processes)."""
    digest = hashlib.sha256("|".join(map(str, keys)).encode()).digest()
    return options[int.from_bytes(digest[:4], "big") % len(options)]


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def question_kind(spec: FieldSpec) -> str | None:
    """Which question a user can ask about this field: "enum", "date", "range" or None."""
    if spec.enum is not None:
        return "enum"
    if spec.format == "date":
        return "date"
    if spec.type in ("integer", "number") and "minimum" in spec.schema_:
        return "range"
    return None


def expected_answers(spec: FieldSpec) -> list[str]:
    """What an answer to the user's question about `spec` must mention."""
    kind = question_kind(spec)
    if kind == "enum":
        return [str(option) for option in spec.enum or []]
    if kind == "date":
        return ["YYYY-MM-DD"]
    if kind == "range":
        return [_as_text(spec.schema_["minimum"]), _as_text(spec.schema_["maximum"])]
    return []


# ----------------------------------------------------------------------------- goals


def _invalid_value(spec: FieldSpec, valid: str) -> str | None:
    """A plausible value for `spec` that the form rejects, or None if the field accepts all."""
    candidates: list[str] = []
    if spec.format == "date":
        year, month, day = valid.split("-")
        candidates.append(f"{month}/{day}/{year}")
    elif spec.format == "email":
        candidates.append(valid.replace("@", " at "))
    elif spec.enum is not None:
        candidates.append("the usual one")
    elif spec.type == "boolean":
        candidates.append("maybe")
    elif spec.type in ("integer", "number") and "maximum" in spec.schema_:
        candidates.append(_as_text(int(spec.schema_["maximum"]) + 10))
    elif "pattern" in spec.schema_:
        candidates += [re.sub(r"^[A-Za-z]+-?", "", valid), valid[:-1], valid + "9"]
    for candidate in candidates:
        try:
            check_value(spec, candidate)
        except FieldError:
            return candidate
    return None


_WORDS = """amber anchor apple arrow autumn basket beacon berry blanket bottle bridge bright
broken button cable candle canvas carbon cedar chalk cherry cloud cobalt copper coral cotton
crystal daisy desert dinner echo ember engine fabric falcon feather fern field forest fossil
frame garden garnet ginger glass golden granite harbor hazel helmet honey island ivory jacket
jasmine kettle ladder lantern lemon linen maple marble meadow metal mint mirror morning
needle north ocean olive orbit paper pebble pepper pillow pine planet pocket quiet rabbit
river rocket saddle silver slate smoke spring stone summer sunset timber tulip velvet walnut
willow window winter yellow""".split()
_FIRST = (
    "Ana Ben Carla David Elena Farid Grace Hugo Ines Jonas Kira Liam Maya Noor Omar Paula".split()
)
_LAST = "Ruiz Novak Tanaka Okafor Berg Costa Dubois Fischer Haddad Ivanova Jensen Kim Lopez".split()
_STREETS = "Street Road Lane Avenue Way".split()


def _made_up_value(spec: FieldSpec, rng: random.Random) -> str | None:
    """A random valid value for `spec` that its examples do not list, or None."""
    value: str
    if spec.enum is not None:
        value = _as_text(rng.choice(spec.enum))
    elif spec.type == "boolean":
        value = rng.choice(["yes", "no"])
    elif spec.format == "date":
        value = f"{rng.randint(2024, 2026)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    elif spec.format == "email":
        first, last = rng.choice(_FIRST).lower(), rng.choice(_LAST).lower()
        value = f"{first}.{last}@{rng.choice(['example.com', 'example.org', 'mail.test'])}"
    elif spec.type in ("integer", "number"):
        low = int(spec.schema_.get("minimum", 0))
        high = int(min(spec.schema_.get("maximum", low + 1000), low + 1000))
        value = str(rng.randint(max(low, 1) if high > 1 else low, high))
        if spec.type == "number" and rng.random() < 0.3:
            value = f"{value}.5"
    elif "pattern" in spec.schema_ and spec.examples:
        value = re.sub(r"[0-9]", lambda _: str(rng.randint(0, 9)), str(rng.choice(spec.examples)))
    elif "name" in spec.name and "company" not in spec.name:
        value = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    elif "address" in spec.name:
        town = rng.choice(_WORDS).capitalize() + rng.choice(["ton", "field", "ville", " Hills"])
        street = f"{rng.choice(_WORDS).capitalize()} {rng.choice(_STREETS)}"
        value = f"{rng.randint(1, 300)} {street} {town}"
    else:
        value = " ".join(rng.sample(_WORDS, rng.randint(2, 4)))
        if "company" in spec.name:
            value = value.title() + rng.choice([" Ltd", " Inc", " and Co"])
    try:
        check_value(spec, value)
    except FieldError:
        return None
    return value


def _rejects(spec: FieldSpec, value: str) -> bool:
    try:
        check_value(spec, value)
    except FieldError:
        return True
    return False


def make_goal(
    form: Form | None,
    behaviour: Behaviour,
    seed: int = 0,
    *,
    company: str = "",
    vary: bool = False,
) -> UserGoal:
    """A user goal for `form` with `behaviour`, deterministic in `seed`.

    Values come from the fields' `examples`; with `vary`, most are made up instead (random
    dates, numbers in range, names, phrases, codes with other digits), so that training
    dialogues show many more values than the forms list.

    Raises `UsageError` when the form has no field the behaviour can apply to.
    """
    if behaviour == "unknown_form" or form is None:
        if not company and form is None:
            raise UsageError(
                "Name the company of an unknown_form goal: make_goal(None, ..., company=...)."
            )
        company = company or (form.company if form else "")
        request = _pick(UNKNOWN_REQUESTS, company, seed)
        return UserGoal(
            id=f"{company}/none/unknown_form/{seed}",
            company=company,
            form=None,
            request=request,
            behaviour="unknown_form",
        )
    rng = random.Random(f"{form.name}|{behaviour}|{seed}")
    fields = form.fields
    values: dict[str, str] = {}
    for spec in fields:
        options = [_as_text(example) for example in spec.examples or spec.enum or []]
        if not options:
            raise UsageError(f"Field {form.name}.{spec.name} needs `examples` in its schema.")
        coin = behaviour != "skip_optional" and rng.random() < 0.5
        if spec.required or behaviour == "happy" or coin:
            made_up = _made_up_value(spec, rng) if vary and rng.random() < 0.8 else None
            values[spec.name] = made_up or rng.choice(options)
    goal_field: str | None = None
    first_value: str | None = None
    if behaviour == "invalid_value":
        eligible = [s for s in fields if s.name in values and _invalid_value(s, values[s.name])]
        if eligible:
            spec = rng.choice(eligible)
            goal_field, first_value = spec.name, _invalid_value(spec, values[spec.name])
    elif behaviour == "nonsense":
        gibberish = rng.choice(NONSENSE_VALUES)
        eligible = [s for s in fields if s.name in values and _rejects(s, gibberish)]
        if eligible:
            goal_field, first_value = rng.choice(eligible).name, gibberish
    elif behaviour == "asks_question":
        eligible = [s for s in fields if s.name in values and question_kind(s)]
        if eligible:
            goal_field = rng.choice(eligible).name
    elif behaviour == "changes_mind":
        eligible = [
            s for s in fields if s.name in values and len({_as_text(e) for e in s.examples}) > 1
        ]
        if eligible:
            spec = rng.choice(eligible)
            pool = {_as_text(e) for e in spec.examples}
            if vary and (made_up := _made_up_value(spec, rng)):
                pool.add(made_up)
            others = sorted(pool - {values[spec.name]})
            goal_field, first_value = spec.name, values[spec.name]
            values[spec.name] = rng.choice(others)
    elif behaviour == "refuses_value":
        eligible = [s for s in fields if s.required]
        goal_field = rng.choice(eligible).name if eligible else None
    elif behaviour == "skip_optional":
        eligible = [s for s in fields if not s.required]
        goal_field = eligible[0].name if eligible else None
    if behaviour != "happy" and goal_field is None:
        raise UsageError(f"Form {form.name!r} has no field for the {behaviour!r} behaviour.")
    return UserGoal(
        id=f"{form.company}/{form.name}/{behaviour}/{seed}",
        company=form.company,
        form=form.name,
        request=_pick(form.requests or [form.description], form.name, behaviour, seed),
        values=values,
        behaviour=behaviour,
        field=goal_field,
        first_value=first_value,
    )


def make_goals(
    split: Split | None = None,
    *,
    behaviours: Sequence[Behaviour] = BEHAVIOURS,
    seeds: Sequence[int] = (0,),
    company: str | None = None,
    vary: bool = False,
) -> list[UserGoal]:
    """One goal per form of the split (or company), behaviour and seed, in a stable order."""
    return [
        make_goal(form, behaviour, seed, vary=vary)
        for seed in seeds
        for form in forms(split, company=company)
        for behaviour in behaviours
    ]


# ----------------------------------------------------------------------------- scripted user


def scripted_reply(goal: UserGoal, tape: Tape[Any, Any]) -> tuple[str, dict[str, Any]]:
    """The scripted user's next line on its own `tape`, and its intent (for the scorer).

    The last step of `tape` is what the assistant just said (a `UserMessage` whose
    `metadata.extra` names the action, the field asked about and the form's values); earlier
    `AssistantMessage`s are the user's own lines, with their intents.
    """
    said = [s.metadata.extra for s in tape.steps if isinstance(s, AssistantMessage)]
    last = tape.last
    if not said or not isinstance(last, UserMessage):
        return goal.request, {"intent": "request"}
    incoming = last.metadata.extra
    form = goal.get_form()
    if incoming.get("submitted"):
        return DONE_PHRASE, {"intent": "done"}
    if form is None:
        return NO_FORM_PHRASE, {"intent": "done"}
    action = incoming.get("action")
    key = (goal.id, len(said))
    if action == "confirm_form":
        return _confirm_reply(goal, form, incoming.get("values") or {}, said, key)
    spec = form.field(incoming.get("field") or "") or _field_in_text(form, last.content)
    if spec is None:
        return UNCLEAR_PHRASE, {"intent": "unclear"}
    before = [s for s in said if s.get("field") == spec.name]
    intent: dict[str, Any] = {"field": spec.name}
    if spec.name == goal.field:
        said_first = any(s.get("intent") in ("invalid", "question", "refuse") for s in before)
        if goal.behaviour in ("invalid_value", "nonsense") and not said_first:
            assert goal.first_value is not None
            return _value_line(spec, goal.first_value, key), {**intent, "intent": "invalid"}
        if goal.behaviour == "asks_question" and not said_first:
            kind = question_kind(spec)
            assert kind is not None
            text = _pick(QUESTION_PHRASES[kind], *key)
            return text, {**intent, "intent": "question", "expects": expected_answers(spec)}
        if goal.behaviour == "refuses_value" and not said_first:
            return _pick(REFUSE_TEMPLATES, *key).format(label=spec.label), {
                **intent,
                "intent": "refuse",
            }
        if goal.behaviour == "changes_mind" and not before and goal.first_value is not None:
            return _value_line(spec, goal.first_value, key), {**intent, "intent": "value"}
    if spec.name not in goal.values:
        return _pick(SKIP_PHRASES, *key), {**intent, "intent": "skip"}
    return _value_line(spec, goal.values[spec.name], key), {**intent, "intent": "value"}


def _confirm_reply(
    goal: UserGoal,
    form: Form,
    shown: dict[str, Any],
    said: list[dict[str, Any]],
    key: tuple[Any, ...],
) -> tuple[str, dict[str, Any]]:
    if goal.behaviour == "changes_mind" and not any(s.get("intent") == "change" for s in said):
        spec = form.field(goal.field or "")
        assert spec is not None
        line = _pick(CHANGE_TEMPLATES, *key).format(label=spec.label, value=goal.values[spec.name])
        return line, {"intent": "change", "field": spec.name}
    for spec in form.fields:
        wanted = goal.values.get(spec.name)
        if wanted is not None and (
            spec.name not in shown or not same_value(spec, shown[spec.name], wanted)
        ):
            line = CORRECT_TEMPLATE.format(label=spec.label, value=wanted)
            return line, {"intent": "correct", "field": spec.name}
        if wanted is None and shown.get(spec.name) is not None:
            line = CLEAR_TEMPLATE.format(label=spec.label)
            return line, {"intent": "correct", "field": spec.name}
    return _pick(CONFIRM_PHRASES, *key), {"intent": "confirm"}


def _value_line(spec: FieldSpec, value: str, key: tuple[Any, ...]) -> str:
    templates = BOOLEAN_TEMPLATES if spec.type == "boolean" else VALUE_TEMPLATES
    return _pick(templates, *key, spec.name).format(label=spec.label, value=value)


def _field_in_text(form: Form, text: str) -> FieldSpec | None:
    """The field whose label or name the assistant's message mentions (longest first)."""
    lowered = text.lower()
    for spec in sorted(form.fields, key=lambda s: -len(s.label)):
        if spec.label.lower() in lowered or spec.name in lowered:
            return spec
    return None


class ScriptedUserNode(Node):
    """Writes the scripted user's next line; the goal is the simulator tape's `context`."""

    async def generate(self, agent: Agent, tape: Tape[Any, Any]) -> AsyncIterator[NodeOutput]:
        goal = UserGoal.model_validate((tape.context or {})["goal"])
        text, extra = scripted_reply(goal, tape)
        step = AssistantMessage(content=text)
        step.metadata.extra.update(extra)
        yield step


def scripted_user() -> Agent:
    """The deterministic simulated user (its tape's context holds the goal)."""
    return Agent("scripted_user", nodes=[ScriptedUserNode("reply")])


# ----------------------------------------------------------------------------- LLM user

_BEHAVIOUR_NOTES: dict[str, str] = {
    "happy": "Answer each question with the right value.",
    "invalid_value": "The first time you are asked for the {label}, answer '{first_value}'; "
    "give the right value when asked again.",
    "nonsense": "The first time you are asked for the {label}, answer '{first_value}'; "
    "give the right value when asked again.",
    "skip_optional": "When asked for a field you have no value for, say you want to skip it.",
    "asks_question": "When asked for the {label}, first ask which values are allowed.",
    "changes_mind": "Give '{first_value}' as the {label}; when asked to confirm, change it "
    "to '{value}'.",
    "refuses_value": "The first time you are asked for the {label}, refuse to give it; give "
    "it when told it is required.",
    "unknown_form": "If the assistant cannot help, thank them and stop.",
}


def user_instructions(goal: UserGoal) -> str:
    """The system prompt of the LLM-backed user for `goal`."""
    form = goal.get_form()
    lines = [
        "You are a customer talking to a company's assistant, who fills in a form for you.",
        "Write only your own next message: short, plain, one thing at a time.",
        f"Your request: {goal.request}",
    ]
    if form is not None:
        lines.append(f"The form you need: {form.description}")
        lines.append("Your values (give each one exactly as written when asked):")
        lines += [f"- {form.field(name).label}: {value}" for name, value in goal.values.items()]  # type: ignore[union-attr]
        lines.append("Fields not listed: you do not want to fill them; ask to skip them.")
        lines.append("When asked to confirm, say yes if the values are right, else correct them.")
    spec = form.field(goal.field) if form and goal.field else None
    note = _BEHAVIOUR_NOTES[goal.behaviour].format(
        label=spec.label if spec else "",
        first_value=goal.first_value or "",
        value=goal.values.get(goal.field or "", ""),
    )
    lines.append(note)
    return "\n".join(lines)


def llm_user(llm: LLM | str) -> Agent:
    """A simulated user played by `llm` (its tape's context holds the goal and instructions)."""
    node = LLMNode("reply", system_prompt="{{ context.instructions }}", steps=(AssistantMessage,))
    return Agent("llm_user", nodes=[node], llms=llm)
