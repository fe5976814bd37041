"""Steps: the typed entries of a tape, their five families and the registry of kinds.

Steps come in five families: `Thought` (the agent reasons), `Action` (the agent asks
the world to do something), `Observation` (the world answers), `StopStep` (the agent is done)
and `Error` (something went wrong and the tape says what). Concrete step types declare a
`kind: Literal[...]`; every concrete kind is registered on class creation and tapes load steps
through that registry only, so a tape file can never import arbitrary code. A step whose kind
is not registered (written by an older or newer program) loads as `UnknownStep`, which keeps
its data and writes it back unchanged.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_serializer,
)

from tapeagents.errors import UsageError

__all__ = [
    "Action",
    "AssistantMessage",
    "Call",
    "Error",
    "ErrorObservation",
    "FinalAnswer",
    "LLMFailure",
    "NodeFailure",
    "Observation",
    "ParsingFailure",
    "Reasoning",
    "Respond",
    "SetNextNode",
    "Step",
    "StepMetadata",
    "StopStep",
    "StoreFailure",
    "Summary",
    "Thought",
    "ToolCall",
    "ToolResult",
    "UnknownStep",
    "UserMessage",
    "load_step",
    "new_id",
    "step_kinds",
]


def new_id() -> str:
    """A fresh random id (32 hex characters)."""
    return os.urandom(16).hex()


class StepMetadata(BaseModel):
    """Where a step came from. Mutable, unlike the step itself, so the runner can stamp it."""

    id: str = Field(default_factory=new_id)
    """Unique id of the step; observations point at their action through it."""
    agent: str = ""
    """Path of the agent that produced the step (`root/sub`), empty for the environment or user."""
    node: str = ""
    """Name of the node that produced the step."""
    llm_call_id: str | None = None
    """Id of the `LLMCall` whose output this step was parsed from."""
    created_at: float = Field(default_factory=time.time)
    """Creation time, seconds since the epoch."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Free-form data (for example the tool-call id the model gave this step)."""


_REGISTRY: dict[str, type[Step]] = {}


class Step(BaseModel):
    """One entry on a tape. Subclass a family (`Thought`, `Action`, ...) and set `kind`."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", use_attribute_docstrings=True, defer_build=True
    )

    kind: str
    """Discriminator that names the step type in JSON."""
    metadata: StepMetadata = Field(default_factory=StepMetadata)
    """Provenance; excluded from what the model sees."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        default = cls.model_fields["kind"].default
        if not isinstance(default, str):
            return  # an abstract family, not a concrete kind
        known = _REGISTRY.get(default)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise UsageError(
                f"Step kind {default!r} is already used by {known.__module__}.{known.__qualname__};"
                f" give {cls.__qualname__} another kind."
            )
        _REGISTRY[default] = cls

    def llm_dict(self) -> dict[str, Any]:
        """The step's own fields, without `kind` and `metadata`: what a model reads or writes."""
        return self.model_dump(exclude={"kind", "metadata"})

    def llm_text(self) -> str:
        """The step as text for a prompt; a single string field is shown bare."""
        data = self.llm_dict()
        if len(data) == 1:
            (value,) = data.values()
            if isinstance(value, str):
                return value
        return json.dumps(data, ensure_ascii=False)


def step_kinds() -> dict[str, type[Step]]:
    """All registered step kinds and their classes."""
    return dict(_REGISTRY)


class UnknownStep(Step):
    """A step whose kind this program does not know. Keeps its JSON and writes it back as is."""

    model_config = ConfigDict(frozen=True, extra="allow", use_attribute_docstrings=True)
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_serializer(mode="wrap")
    def _write_back_unchanged(self, handler: Any) -> dict[str, Any]:
        return self._raw if self._raw else handler(self)


def load_step(data: dict[str, Any] | Step) -> Step:
    """Build a step from its JSON data through the kind registry (never through imports)."""
    if isinstance(data, Step):
        return data
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        raise UsageError(f"A step must be a JSON object with a string 'kind', got: {data!r:.200}")
    cls = _REGISTRY.get(data["kind"]) or _plugin_step_class(data["kind"])
    if cls is None:
        return _unknown(data)
    return cls.model_validate(data)


_plugins_loaded = False


def _plugin_step_class(kind: str) -> type[Step] | None:
    """Import the step modules that packages declare (entry-point group `tapeagents.steps`) once.

    So `tapeagents show` or the studio load a browser tape's steps as their own types without
    the core importing any environment. A plugin that fails to import is skipped: its steps
    then load as `UnknownStep`, which keeps their data.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return None
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for entry in entry_points(group="tapeagents.steps"):
        try:
            entry.load()
        except Exception:  # noqa: BLE001 - a broken plugin must not make tapes unreadable
            continue
    return _REGISTRY.get(kind)


def _unknown(data: dict[str, Any]) -> UnknownStep:
    metadata = data.get("metadata")
    try:
        meta = StepMetadata.model_validate(metadata) if isinstance(metadata, dict) else None
    except ValidationError:
        meta = None
    fields = {k: v for k, v in data.items() if k not in ("kind", "metadata")}
    step = UnknownStep(kind=data["kind"], metadata=meta or StepMetadata(), **fields)
    step._raw = data
    return step


# ----------------------------------------------------------------------------- families


class Thought(Step):
    """The agent's reasoning or bookkeeping; the environment ignores it."""


class Action(Step):
    """A request to the outside world; the environment answers with exactly one observation."""

    awaits_input: ClassVar[bool] = False
    """True when the answer comes from outside the environment (the user), not from it."""


class Observation(Step):
    """What the world answered or reported."""

    action_id: str | None = None
    """Metadata id of the action this observation answers; None for unprompted input."""

    image_fields: ClassVar[tuple[str, ...]] = ()
    """Fields that hold images (data URLs, or lists of them): a prompt shows them to the model
    as images, never as text."""

    def llm_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude={"kind", "metadata", "action_id", *self.image_fields})

    def llm_images(self) -> list[str]:
        """The images of the observation, as URLs (`data:image/png;base64,...`), in field order."""
        images: list[str] = []
        for name in self.image_fields:
            value = getattr(self, name)
            if isinstance(value, str) and value:
                images.append(value)
            elif isinstance(value, list | tuple):
                images.extend(item for item in value if isinstance(item, str) and item)
        return images


class StopStep(Step):
    """The agent is finished with the tape."""


class Error(Step):
    """Something failed; the tape records what, so nothing is lost."""

    error: str
    """What went wrong, in words a developer can act on."""


# ----------------------------------------------------------------------------- built-in kinds


class UserMessage(Observation):
    """A message from the user."""

    kind: Literal["user"] = "user"
    content: str
    """What the user wrote."""
    images: list[str] = Field(default_factory=list, exclude_if=lambda images: not images)
    """Images the user attached, as data URLs (`data:image/png;base64,...`); written to JSON
    only when there are some."""
    image_fields: ClassVar[tuple[str, ...]] = ("images",)


class AssistantMessage(Action):
    """A message from the agent to the user; the run waits for the user's reply."""

    kind: Literal["assistant"] = "assistant"
    awaits_input: ClassVar[bool] = True
    content: str
    """The text shown to the user."""


class Reasoning(Thought):
    """Free-text reasoning."""

    kind: Literal["reasoning"] = "reasoning"
    text: str
    """The reasoning."""


class Summary(Thought):
    """A summary of the conversation before it, written when the conversation outgrew the
    model's context window; prompts show it in place of the steps it covers."""

    kind: Literal["summary"] = "summary"
    text: str
    """The summary."""


class SetNextNode(Thought):
    """Names the node of this agent that acts next (otherwise nodes run in order)."""

    kind: Literal["set_next_node"] = "set_next_node"
    next_node: str
    """The name of the node, of the agent that holds the tape, that runs next."""


class Call(Thought):
    """The current agent hands the tape to one of its subagents with a request."""

    kind: Literal["call"] = "call"
    agent_name: str
    """The name of the subagent that takes over the tape (one of the caller's `subagents`)."""
    content: str = ""
    """The request to the subagent."""


class Respond(Thought):
    """A subagent hands the tape back to the agent that called it, with its answer."""

    kind: Literal["respond"] = "respond"
    content: str
    """The subagent's answer to the request it was called with."""


class ToolCall(Action):
    """A call of a tool that the environment provides."""

    kind: Literal["tool_call"] = "tool_call"
    name: str
    """The tool's name."""
    arguments: dict[str, Any] = Field(default_factory=dict)
    """Arguments by parameter name."""
    call_id: str = Field(default_factory=lambda: "call_" + new_id()[:24])
    """The id the model gave this call; tool results quote it."""


class ToolResult(Observation):
    """What a tool returned, or the error it raised."""

    kind: Literal["tool_result"] = "tool_result"
    name: str
    """The name of the tool that ran."""
    call_id: str
    """The `call_id` of the `ToolCall` this result answers."""
    content: str
    """The result as text (JSON for structured results)."""
    error: str | None = None
    """Set when the tool raised or its arguments were invalid."""


class ErrorObservation(Observation):
    """The environment could not perform an action (unknown action, crash, interruption)."""

    kind: Literal["error_observation"] = "error_observation"
    error: str
    """Why the action could not be performed."""


class FinalAnswer(StopStep):
    """The agent's final answer; ends the run."""

    kind: Literal["final_answer"] = "final_answer"
    answer: str
    """The answer, as text."""


class ParsingFailure(Error):
    """The model's output could not be turned into steps; its raw text is kept."""

    kind: Literal["parsing_failure"] = "parsing_failure"
    raw_output: str
    """Exactly what the model produced (text and tool calls as JSON)."""


class LLMFailure(Error):
    """The model backend failed (after its retries) or the prompt did not fit."""

    kind: Literal["llm_failure"] = "llm_failure"


class NodeFailure(Error):
    """A node raised an exception; the run stops and re-raises it."""

    kind: Literal["node_failure"] = "node_failure"


class StoreFailure(Error):
    """The tape store refused to write a step (text the database cannot hold, a failed
    COMMIT, a full disk). It takes the refused step's place; the run stops with status
    "error", and a resume tries the refused step's node again."""

    kind: Literal["store_failure"] = "store_failure"
