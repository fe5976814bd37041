"""The JSON schema of a JSON-mode answer: a list of steps and tool calls, as `inverse` writes them.

`LLMNode(mode="json", structured=True)` sends it as the prompt's `response_format`, so a model
decoded under it (the local engine's grammar, vLLM, ...) writes only answers the node parses, in
the exact form of the training examples the exporter renders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tapeagents.environment import ToolSpec
from tapeagents.steps import Observation, Step

__all__ = ["example_fields", "fields_schema", "steps_response_format"]


def steps_response_format(
    step_types: Sequence[type[Step]], tools: Sequence[ToolSpec], *, max_items: int | None = None
) -> dict[str, Any]:
    """An OpenAI `response_format` for a non-empty JSON array of the given step types (`kind`
    first, then every field the step writes, in declaration order, all present) and tool calls
    (`{"kind": "tool_call", "name": ..., "arguments": ...}` with each tool's parameters)."""
    defs: dict[str, Any] = {}
    options = [_step_item_schema(cls, defs) for cls in step_types]
    options += [_tool_item_schema(tool, defs) for tool in tools]
    schema: dict[str, Any] = {"type": "array", "items": {"anyOf": options}, "minItems": 1}
    if max_items is not None:
        schema["maxItems"] = max_items
    if defs:
        schema["$defs"] = defs
    return {"type": "json_schema", "json_schema": {"name": "steps", "schema": schema}}


def _written_fields(cls: type[Step]) -> list[str]:
    """The fields `Step.llm_dict` writes for `cls`, in order (what the model writes in JSON)."""
    skipped = {"kind", "metadata"} | ({"action_id"} if issubclass(cls, Observation) else set())
    return [
        name
        for name, field in cls.model_fields.items()
        if name not in skipped and not field.exclude
    ]


def _step_item_schema(cls: type[Step], defs: dict[str, Any]) -> dict[str, Any]:
    """One step type as `inverse` writes it: `kind`, then every written field."""
    schema = cls.model_json_schema()
    fields = schema.get("properties", {})
    properties: dict[str, Any] = {"kind": {"const": cls.model_fields["kind"].default}}
    for name in _written_fields(cls):
        properties[name] = {k: v for k, v in fields.get(name, {}).items() if k != "title"}
    item = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    return _hoist_defs(item, schema.get("$defs", {}), defs, cls.__name__)


def _tool_item_schema(tool: ToolSpec, defs: dict[str, Any]) -> dict[str, Any]:
    """A call of `tool` as `inverse` writes it: `kind`, `name`, then the arguments."""
    parameters = {k: v for k, v in tool.parameters.items() if k != "$defs"}
    item = {
        "type": "object",
        "properties": {
            "kind": {"const": "tool_call"},
            "name": {"const": tool.name},
            "arguments": parameters or {"type": "object"},
        },
        "required": ["kind", "name", "arguments"],
        "additionalProperties": False,
    }
    return _hoist_defs(item, tool.parameters.get("$defs", {}), defs, tool.name)


def _hoist_defs(
    item: dict[str, Any], local: Mapping[str, Any], defs: dict[str, Any], owner: str
) -> dict[str, Any]:
    """Move the definitions `item` refers to into the shared `defs` (a JSON schema resolves
    `#/$defs/...` from its root), renaming any that clash with a different one there."""
    needed: list[str] = []
    todo = _refs(item)
    while todo:
        name = todo.pop()
        if name in local and name not in needed:
            needed.append(name)
            todo += _refs(local[name])
    renames = {
        name: f"{owner}.{name}" for name in needed if name in defs and defs[name] != local[name]
    }
    for name in needed:
        defs[renames.get(name, name)] = _renamed(local[name], renames)
    result: dict[str, Any] = _renamed(item, renames)
    return result


def _refs(value: Any) -> list[str]:
    """The `$defs` names that `$ref`s in `value` point at."""
    if isinstance(value, dict):
        found = [
            ref[len("#/$defs/") :]
            for ref in [value.get("$ref")]
            if isinstance(ref, str) and ref.startswith("#/$defs/")
        ]
        return found + [name for v in value.values() for name in _refs(v)]
    if isinstance(value, list):
        return [name for v in value for name in _refs(v)]
    return []


def _renamed(value: Any, renames: Mapping[str, str]) -> Any:
    """`value` with its `$ref`s to renamed definitions updated."""
    if isinstance(value, dict):
        out = {k: _renamed(v, renames) for k, v in value.items()}
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in renames:
            out["$ref"] = "#/$defs/" + renames[ref[8:]]
        return out
    if isinstance(value, list):
        return [_renamed(v, renames) for v in value]
    return value


def fields_schema(cls: type[Step]) -> dict[str, Any]:
    """The JSON schema of a step type's own fields (no `kind`, no `metadata`): its tool's
    parameters."""
    schema = cls.model_json_schema()
    props = {
        k: {kk: vv for kk, vv in v.items() if kk != "title"}
        for k, v in schema.get("properties", {}).items()
        if k not in ("kind", "metadata")
    }
    result: dict[str, Any] = {"type": "object", "properties": props}
    required = [r for r in schema.get("required", []) if r not in ("kind", "metadata")]
    if required:
        result["required"] = required
    if "$defs" in schema:
        defs = {k: v for k, v in schema["$defs"].items() if k != "StepMetadata"}
        if defs:
            result["$defs"] = defs
    return result


def example_fields(cls: type[Step]) -> dict[str, Any]:
    """Each field of a step type with its type's name: the JSON-mode format shown to models."""
    return {
        name: (
            field.annotation.__name__
            if isinstance(field.annotation, type)
            else str(field.annotation)
        )
        for name, field in cls.model_fields.items()
        if name not in ("kind", "metadata")
    }
