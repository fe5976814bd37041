"""Environments: the world that answers an agent's actions with observations.

An environment implements `react(action, tape) -> Observation`. The orchestrator gives it each
pending action in turn and keeps the invariant *exactly one observation per action*: an
environment that raises, or returns something that is not an observation, gets an
`ErrorObservation` in its place, so a tape never holds an unanswered action.

`ToolEnvironment` turns plain typed Python functions (sync or async) into tools.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from tapeagents.errors import UsageError
from tapeagents.steps import Action, ErrorObservation, Observation, ToolCall, ToolResult
from tapeagents.sync import run_blocking
from tapeagents.tape import Tape

__all__ = ["Environment", "ToolEnvironment", "ToolSpec", "observe", "react_sync"]


class Environment:
    """Answers actions with observations. Override `react`; `aclose` releases resources."""

    concurrent: bool = False
    """Whether the actions of one model answer may be performed at the same time (their
    observations still go on the tape in the order of the actions). Off by default: a browser
    performs one action at a time."""

    async def react(self, action: Action, tape: Tape[Any, Any]) -> Observation:
        """Perform `action` and describe the result. Unknown actions get an error observation."""
        return ErrorObservation(
            error=f"{type(self).__name__} cannot perform actions of kind {action.kind!r}."
        )

    async def aclose(self) -> None:
        """Release resources (browsers, connections). Called by the owner, not by `run`."""

    async def __aenter__(self) -> Environment:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def observe(env: Environment, action: Action, tape: Tape[Any, Any]) -> Observation:
    """Exactly one observation for `action`, naming it, whatever the environment does.

    An environment that raises, or returns something that is not an observation, yields an
    `ErrorObservation` that says so: its failure is information for the agent.
    """
    try:
        observation = await env.react(action, tape)
    except Exception as error:
        observation = ErrorObservation(error=f"{type(error).__name__}: {error}")
    if not isinstance(observation, Observation):
        observation = ErrorObservation(
            error=f"{type(env).__name__}.react returned {type(observation).__name__}, "
            "not an Observation."
        )
    if observation.action_id is None:
        observation = observation.model_copy(update={"action_id": action.metadata.id})
    return observation


def react_sync(env: Environment, action: Action, tape: Tape[Any, Any]) -> Observation:
    """Blocking `observe`, for scripts without an event loop (in one, `await observe(...)`)."""
    return run_blocking(
        observe(env, action, tape), sync_name="react_sync", use_instead="await observe(...)"
    )


# ----------------------------------------------------------------------------- tools

_ARG_LINE = re.compile(r"^\s{2,}(\*{0,2}\w+)(?:\s*\([^)]*\))?:\s*(.+)$")


def _parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Summary paragraph and Google-style `Args:` descriptions of a docstring."""
    if not doc:
        return "", {}
    doc = inspect.cleandoc(doc)
    summary = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    params: dict[str, str] = {}
    in_args = False
    last: str | None = None
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Arguments:", "Parameters:"):
            in_args = True
            continue
        if in_args:
            if line and not line.startswith(" "):
                break  # next section
            match = _ARG_LINE.match(line)
            if match:
                last = match.group(1).lstrip("*")
                params[last] = match.group(2).strip()
            elif last and line.strip():
                params[last] += " " + line.strip()
    return summary, params


class ToolSpec(BaseModel):
    """A tool the model may call: name, description, JSON schema of the arguments."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    description: str = ""
    parameters: dict[str, Any]
    """JSON schema of the arguments object."""
    function: Callable[..., Any] | None = None
    arguments_model: type[BaseModel] | None = None

    @classmethod
    def from_function(cls, function: Callable[..., Any]) -> ToolSpec:
        """Build a tool from a typed function; its docstring gives the descriptions."""
        summary, arg_docs = _parse_docstring(function.__doc__)
        fields: dict[str, Any] = {}
        hints = inspect.get_annotations(function, eval_str=True)
        for name, param in inspect.signature(function).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise UsageError(f"Tool {function.__name__!r} cannot take *args or **kwargs.")
            annotation = hints.get(name, Any)
            default = ... if param.default is param.empty else param.default
            fields[name] = (annotation, Field(default, description=arg_docs.get(name)))
        model = create_model(f"{function.__name__}_arguments", **fields)
        schema = model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        return cls(
            name=function.__name__,
            description=summary,
            parameters=schema,
            function=function,
            arguments_model=model,
        )

    def openai_schema(self) -> dict[str, Any]:
        """The tool in the OpenAI `tools` format."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


class ToolEnvironment(Environment):
    """Runs `ToolCall`s against plain Python functions.

    Sync functions run in a worker thread so they never block other sessions, and the calls of
    one model answer run at the same time (`concurrent=False` runs them one by one, for functions
    that share state without a lock). A function that
    raises, an unknown tool name or invalid arguments give a `ToolResult` with `error` set: the
    model sees the message and can correct itself.

    Example:
        >>> def add(a: int, b: int) -> int:
        ...     '''Add two integers.'''
        ...     return a + b
        >>> env = ToolEnvironment([add])
        >>> [tool.name for tool in env.tools]
        ['add']
    """

    def __init__(
        self, functions: Sequence[Callable[..., Any] | ToolSpec], *, concurrent: bool = True
    ) -> None:
        self.concurrent = concurrent
        self.tools = [
            f if isinstance(f, ToolSpec) else ToolSpec.from_function(f) for f in functions
        ]
        self._by_name = {tool.name: tool for tool in self.tools}
        if len(self._by_name) != len(self.tools):
            raise UsageError("Two tools have the same name; give each function a unique name.")

    async def react(self, action: Action, tape: Tape[Any, Any]) -> Observation:
        if not isinstance(action, ToolCall):
            return await super().react(action, tape)
        tool = self._by_name.get(action.name)
        if tool is None or tool.function is None:
            known = ", ".join(sorted(self._by_name)) or "none"
            return self._error(action, f"Unknown tool {action.name!r}. Available tools: {known}.")
        try:
            arguments = (
                tool.arguments_model.model_validate(action.arguments)
                if tool.arguments_model is not None
                else None
            )
        except ValidationError as error:
            return self._error(action, f"Invalid arguments for {action.name}: {error}")
        kwargs = (
            {name: getattr(arguments, name) for name in type(arguments).model_fields}
            if arguments is not None
            else dict(action.arguments)
        )
        try:
            if inspect.iscoroutinefunction(tool.function):
                result = await tool.function(**kwargs)
            else:
                result = await asyncio.to_thread(tool.function, **kwargs)
        except Exception as error:  # the tool's failure is the model's information
            return self._error(action, f"{type(error).__name__}: {error}")
        return ToolResult(name=action.name, call_id=action.call_id, content=_as_text(result))

    @staticmethod
    def _error(action: ToolCall, message: str) -> ToolResult:
        return ToolResult(
            name=action.name, call_id=action.call_id, content=f"Error: {message}", error=message
        )


def _as_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    try:
        return json.dumps(result, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(result)
