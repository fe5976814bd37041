"""What every renderer decides about a step the same way: its family, its origin, its summary.

The terminal (`render.text`), the studio and notebooks (`render.html`) colour a step by its
`Family`, label it with `step_origin` and show `step_summary` where one line is enough, so a
step looks the same kind of thing everywhere.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from tapeagents.steps import (
    Action,
    Error,
    Observation,
    Step,
    StopStep,
    Thought,
    ToolCall,
    ToolResult,
    UnknownStep,
    UserMessage,
)

__all__ = ["LINK_FIELDS", "Family", "step_family", "step_fields", "step_origin", "step_summary"]


class Family(StrEnum):
    """How a renderer styles a step: the five step families, plus the user and unknown kinds."""

    USER = "user"
    """A message from the user (an observation, shown apart because a person wrote it)."""
    THOUGHT = "thought"
    ACTION = "action"
    OBSERVATION = "observation"
    STOP = "stop"
    ERROR = "error"
    UNKNOWN = "unknown"
    """A kind this program does not know, or a step outside the five families."""


LINK_FIELDS = ("action_id", "call_id")
"""Fields that link steps together; renderers show them as links or ids, not as content."""


def step_family(step: Step) -> Family:
    """The family a step is rendered as.

    Errors and stops are checked before actions and observations, so a step type that
    inherits from two families is shown as the more telling one.
    """
    if isinstance(step, UnknownStep):
        return Family.UNKNOWN
    if isinstance(step, UserMessage):
        return Family.USER
    if isinstance(step, Error):
        return Family.ERROR
    if isinstance(step, StopStep):
        return Family.STOP
    if isinstance(step, Action):
        return Family.ACTION
    if isinstance(step, Observation):
        return Family.OBSERVATION
    if isinstance(step, Thought):
        return Family.THOUGHT
    return Family.UNKNOWN  # a direct subclass of Step: the hierarchy is open, so no assert_never


def step_origin(step: Step) -> str:
    """Who wrote the step: `agent/node`, "" for the user, "environment" for the world."""
    origin = "/".join(filter(None, [step.metadata.agent, step.metadata.node]))
    if origin:
        return origin
    return "" if isinstance(step, UserMessage) else "environment"


def step_fields(step: Step) -> dict[str, Any]:
    """The step's own fields as JSON values (no kind, no metadata); an unknown kind's as stored."""
    data = step.model_dump(mode="json")
    return {name: value for name, value in data.items() if name not in ("kind", "metadata")}


def step_summary(step: Step, *, indent: int | None = None) -> str:
    """A step's content as one readable string: a tool call as `name({...})`, a tool result as
    its content, a single text field bare, anything else as JSON (indented by `indent`)."""
    if isinstance(step, ToolCall):
        return f"{step.name}({json.dumps(step.arguments, ensure_ascii=False)})"
    if isinstance(step, ToolResult):
        return step.content
    data = step_fields(step)
    if not isinstance(step, UnknownStep):
        data = {name: value for name, value in data.items() if name not in LINK_FIELDS}
    if len(data) == 1:
        (value,) = data.values()
        if isinstance(value, str):
            return value
    return json.dumps(data, ensure_ascii=False, indent=indent, default=str)
